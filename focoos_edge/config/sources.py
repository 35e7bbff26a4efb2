"""Camera source strings (`rtsp://`, `http(s)://`, `usb:N`, `/dev/videoN`, files): pure parsing.

Error messages name the scheme or the part that is wrong, never the whole URL, because camera
URLs carry passwords.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from focoos_edge.common import redact_url

KINDS = ("rtsp", "http", "usb", "file")

_EXPECTED = "expected rtsp://, rtsps://, http(s)://, usb:N, /dev/videoN or file:///path"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_USB = re.compile(r"usb:(\d+)", re.IGNORECASE)
_DEV_VIDEO = re.compile(r"/dev/video(\d+)")
_NETWORK_KINDS = {"rtsp": "rtsp", "rtsps": "rtsp", "http": "http", "https": "http"}


@dataclass(frozen=True)
class Source:
    """A parsed camera source.

    ``kind`` is one of :data:`KINDS`; ``uri`` is what the capture backend opens (the URL, the
    ``/dev/videoN`` node, or the file path); ``device`` is the V4L2 index for ``usb`` sources.
    """

    kind: str
    uri: str
    device: int | None = None

    @property
    def display(self) -> str:
        """The uri with credentials masked, for logs and status output."""
        return redact_url(self.uri)

    def __repr__(self) -> str:
        # The default dataclass repr would print the URL's password.
        return f"Source(kind={self.kind!r}, uri={self.display!r}, device={self.device!r})"


def parse_source(text: str) -> Source:
    """Parse a camera source string; raise ``ValueError`` with a message naming what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"camera source must be a string, not {type(text).__name__}")
    text = text.strip()
    if not text:
        raise ValueError("camera source is empty")
    device = _DEV_VIDEO.fullmatch(text)
    if device:
        return _usb(int(device.group(1)))
    scheme = _SCHEME.match(text)
    if text.startswith(("/", "./", "../")) or scheme is None:
        return Source("file", text)
    name = scheme.group(1).lower()
    if name == "usb":
        return _parse_usb(text)
    if name == "file":
        return _parse_file_url(text)
    if name in _NETWORK_KINDS:
        return _parse_network(name, text)
    raise ValueError(f"unknown camera source scheme {name!r} ({_EXPECTED})")


def _usb(index: int) -> Source:
    return Source("usb", f"/dev/video{index}", index)


def _parse_usb(text: str) -> Source:
    match = _USB.fullmatch(text)
    if match is None:
        raise ValueError("a USB camera source must look like usb:N (N = the /dev/videoN index)")
    return _usb(int(match.group(1)))


def _parse_file_url(text: str) -> Source:
    if not text.lower().startswith("file://"):
        raise ValueError("a file URL must look like file:///absolute/path.mp4")
    parts = urlsplit(text)
    if parts.netloc:
        raise ValueError(
            "file:// URLs take an absolute path (file:///absolute/path.mp4); in 'file://name' "
            "the name would be a host: write a plain relative path instead"
        )
    path = unquote(parts.path)
    if not path.startswith("/") or path == "/":
        raise ValueError("a file URL must look like file:///absolute/path.mp4")
    return Source("file", path)


def _parse_network(scheme: str, text: str) -> Source:
    if not text[len(scheme) + 1 :].startswith("//"):
        raise ValueError(f"a {scheme} source must look like {scheme}://host[:port]/path")
    if any(ch.isspace() for ch in text):
        raise ValueError(f"{scheme}:// URL contains whitespace (percent-encode it as %20)")
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port; the value is not needed
    except ValueError:
        # `from None`: urllib's own message quotes the port text, which may be part of a password.
        raise ValueError(
            f"{scheme}:// URL has an invalid host or port (percent-encode ':', '/', '?', '#' "
            "and '@' inside a user name or password)"
        ) from None
    if not host:
        raise ValueError(f"{scheme}:// URL has no host")
    if "@" in parts.path or "@" in parts.fragment:
        # An unencoded '/' or '#' in a password moves the rest of it into the path.
        raise ValueError(
            f"{scheme}:// URL has an '@' after the host: percent-encode '/', '?', '#' and '@' "
            "inside a user name or password (e.g. '/' as %2F)"
        )
    return Source(_NETWORK_KINDS[scheme], text)
