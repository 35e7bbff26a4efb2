"""Stage 1, the cameras: one thread per camera grabs the freshest frame from an RTSP, USB or file
source, samples it, resizes and JPEG-encodes it (TurboJPEG) into a FrameJob and hands it to the
uplink."""

from focoos_edge.capture.encode import (
    FrameJob,
    JpegEncoder,
    resize_to_max_side,
)
from focoos_edge.capture.frameprep import (
    DEFAULT_IM_SIZE,
    FramePrep,
    ModelImSize,
)
from focoos_edge.capture.source import (
    ScaledFrame,
)
from focoos_edge.capture.turbo import (
    EncoderUnavailableError,
)
from focoos_edge.capture.worker import (
    CameraWorker,
    CaptureOpenError,
    CaptureSettings,
    open_capture,
)

__all__ = [
    "CameraWorker", "CaptureOpenError", "CaptureSettings", "DEFAULT_IM_SIZE", "EncoderUnavailableError",
    "FrameJob", "FramePrep", "JpegEncoder", "ModelImSize", "ScaledFrame", "open_capture", "resize_to_max_side",
]
