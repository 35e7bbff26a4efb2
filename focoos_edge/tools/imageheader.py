"""Image dimensions read from the header, before any decoding (a tiny file may declare gigapixels)."""

from __future__ import annotations


def image_pixels(data: bytes) -> int | None:
    """Width x height declared by a JPEG's frame header or a PNG's IHDR, read before decoding;
    None when it is neither or the header is cut short."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(data) and data[i] == 0xFF:
        marker, size = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn: the frame header
            return int.from_bytes(data[i + 5:i + 7], "big") * int.from_bytes(data[i + 7:i + 9], "big")
        i += 2 + size
    return None
