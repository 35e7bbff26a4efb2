"""Segmentation masks: the server's base64 PNG -> outer-contour polygons (uploaded-image pixels).

The server sends a single-channel 0/255 PNG cropped to the box, origin at the box's top-left
corner (older servers: a full-frame PNG). The PNG header's declared size is checked before
anything is decoded, so a small file that declares 20000 x 20000 pixels costs nothing. Outer
contours are traced (``cv2.findContours``) and simplified to within about 1 % of the box size
(``cv2.approxPolyDP``). A mask that cannot be used is dropped and the detection kept, with
``"mask"`` in its ``broken`` parts (counted as ``errors.malformed_mask``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import struct
from collections.abc import Iterable

import cv2
import numpy as np

from focoos_edge.inference.parse import Detection

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_MASK_B64_CHARS = 4 * 1024 * 1024  # a bbox-cropped 0/255 PNG is a few KiB
SIMPLIFY_FRACTION = 0.01  # polygon within ~1 % of the box size of the traced outline
BOX_SLACK_PX = 2  # a bbox-cropped mask may be this much larger than the box (rounding)


class MaskError(ValueError):
    """The mask cannot be used (not base64, not a PNG, too large, wrong size, empty)."""


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) declared by a PNG's IHDR chunk, without decoding."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise MaskError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def decode_png_mask(b64_png: str, max_width: int, max_height: int) -> np.ndarray:
    """The mask as a uint8 0/255 array, refusing (before decoding) a PNG larger than the limits."""
    if len(b64_png) > MAX_MASK_B64_CHARS:
        raise MaskError("mask larger than 4 MiB")
    try:
        data = base64.b64decode(b64_png, validate=True)
    except (binascii.Error, ValueError):
        raise MaskError("mask is not base64") from None
    width, height = png_size(data)
    if not (0 < width <= max_width and 0 < height <= max_height):
        raise MaskError(f"mask declares {width}x{height} pixels, more than the image")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None or img.shape != (height, width):
        raise MaskError("mask is not a decodable PNG")
    return img


def trace_polygons(mask: np.ndarray, origin: tuple[int, int],
                   epsilon_px: float) -> tuple[tuple[tuple[float, float], ...], ...]:
    """Outer contours of ``mask`` (non-zero pixels), simplified, shifted by ``origin``."""
    binary = (mask > 127).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        simple = cv2.approxPolyDP(contour, epsilon_px, True).reshape(-1, 2)
        if len(simple) >= 3:
            polygons.append(tuple((float(x + origin[0]), float(y + origin[1])) for x, y in simple))
    if not polygons:
        raise MaskError("mask is empty")
    return tuple(polygons)


def mask_polygons(det: Detection, upload_w: int, upload_h: int) -> tuple[tuple[tuple[float, float], ...], ...]:
    """The traced polygons of ``det``'s PNG mask in uploaded-image pixels (raises :class:`MaskError`)."""
    if det.mask_png is None or det.bbox is None:
        raise MaskError("mask without a box")
    x1, y1, x2, y2 = det.bbox
    box_w, box_h = max(1.0, x2 - x1), max(1.0, y2 - y1)
    mask = decode_png_mask(det.mask_png, upload_w + BOX_SLACK_PX, upload_h + BOX_SLACK_PX)
    h, w = mask.shape
    bbox_cropped = w <= math.ceil(box_w) + BOX_SLACK_PX and h <= math.ceil(box_h) + BOX_SLACK_PX
    origin = (math.floor(x1 + 1e-6), math.floor(y1 + 1e-6)) if bbox_cropped else (0, 0)
    return trace_polygons(mask, origin, max(0.5, SIMPLIFY_FRACTION * max(box_w, box_h)))


def trace_masks(dets: Iterable[Detection], *, polygons: bool, upload_w: int,
                upload_h: int) -> tuple[Detection, ...]:
    """``dets`` with ``mask`` set to the traced polygons (``polygons=False``: no mask at all,
    nothing decoded). A mask that cannot be used leaves ``mask`` None and adds ``"mask"`` to
    ``broken``."""
    out = []
    for det in dets:
        if det.mask_png is None or not polygons:
            out.append(dataclasses.replace(det, mask=None))
            continue
        try:
            out.append(dataclasses.replace(det, mask=mask_polygons(det, upload_w, upload_h)))
        except MaskError:
            out.append(dataclasses.replace(det, mask=None, broken=(*det.broken, "mask")))
    return tuple(out)
