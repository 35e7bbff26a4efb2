"""Reading an inference request: the image from its ``multipart/form-data`` body (its declared size
checked against ``MAX_PIXELS`` before it is decoded) and ``confidence_threshold`` from its query."""

from __future__ import annotations

import logging
from email import policy
from email.parser import BytesParser
from urllib.parse import parse_qs

import cv2
import numpy as np

from focoos_edge.tools import limits
from focoos_edge.tools.imageheader import image_pixels

log = logging.getLogger("focoos_edge.tools.localserver")  # the local server logs under one name

DEFAULT_THRESHOLD = 0.5


class UploadError(ValueError):
    """The request body is not a multipart form with an image in a ``file`` part."""


def extract_form_file(content_type: str, body: bytes, field_name: str = "file") -> bytes:
    """Return the content of the ``field_name`` part of a ``multipart/form-data`` body.

    Raises :class:`UploadError` if the body is not multipart or has no such part.
    """
    if not content_type.lower().startswith("multipart/form-data"):
        raise UploadError("expected a multipart/form-data body")
    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise UploadError("malformed multipart/form-data body")
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == field_name:
            # decode=True returns the raw bytes whatever the part's declared content type.
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else b""
    raise UploadError(f"missing form field '{field_name}'")


def parse_threshold(query: str) -> float:
    """The query's ``confidence_threshold`` (the last one given; 0.5 without); ValueError outside 0..1."""
    values = parse_qs(query).get("confidence_threshold")
    if not values:
        return DEFAULT_THRESHOLD
    threshold = float(values[-1])  # ValueError is reported as 422 by the caller
    if not 0.0 <= threshold <= 1.0:
        raise ValueError("confidence_threshold must be within 0..1")
    return threshold


def decode_image(data: bytes) -> np.ndarray | None:
    """The uploaded JPEG or PNG as a BGR image; None when it is empty, cannot be decoded, or its
    header declares more than ``MAX_PIXELS``."""
    if not data:
        return None
    pixels = image_pixels(data)
    if pixels is None or pixels > limits.MAX_PIXELS:  # a tiny file may declare gigabytes of pixels
        log.info("local server: refused an image of %s pixels (at most %d)", pixels, limits.MAX_PIXELS)
        return None
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return None
