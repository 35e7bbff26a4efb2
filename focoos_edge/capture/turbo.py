"""The one place libturbojpeg is loaded (the encoder and the MJPEG decoder share it)."""

from __future__ import annotations

import os
from typing import Any

from focoos_edge.common import package_for

# Names this distribution's package (libturbojpeg0 on Debian, libturbojpeg on Ubuntu/JetPack).
TURBOJPEG_HINT = (
    f"libturbojpeg was not found: install it with 'apt-get install {package_for('turbojpeg')}', "
    "or set TURBOJPEG to the library's path"
)


class EncoderUnavailableError(RuntimeError):
    """The TurboJPEG library cannot be loaded; the message says what to install."""


def load_turbojpeg(lib_path: str | None = None) -> Any:
    """A ``turbojpeg.TurboJPEG`` handle: ``lib_path``, else ``$TURBOJPEG``, else the system library.

    Raises :class:`EncoderUnavailableError` with the install hint when it cannot be loaded.
    """
    try:
        from turbojpeg import TurboJPEG
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise EncoderUnavailableError(f"PyTurboJPEG is not installed ({exc})") from None
    lib_path = lib_path or os.environ.get("TURBOJPEG") or None
    try:
        return TurboJPEG(lib_path) if lib_path else TurboJPEG()
    except (OSError, RuntimeError) as exc:
        raise EncoderUnavailableError(f"{TURBOJPEG_HINT} ({exc})") from None
