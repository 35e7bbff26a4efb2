"""Stage 1, the cameras: one thread per camera grabs the freshest frame from a FrameSource (OpenCV,
PyAV keyframes or USB MJPEG), samples it, fills the privacy masks black, crops, resizes (to the
model's im_size with `max_side: auto`) and JPEG-encodes it (TurboJPEG) into a FrameJob for the
uplink's `submit`."""

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
    ConversionBuffers,
    ScaledFrame,
)
from focoos_edge.capture.turbo import (
    EncoderUnavailableError,
)
from focoos_edge.capture.worker import (
    CameraSnapshot,
    CameraWorker,
    CaptureOpenError,
    CaptureSettings,
    open_capture,
)

__all__ = [
    "CameraSnapshot", "CameraWorker", "CaptureOpenError", "CaptureSettings", "ConversionBuffers",
    "DEFAULT_IM_SIZE",
    "EncoderUnavailableError", "FrameJob", "FramePrep", "JpegEncoder", "ModelImSize", "ScaledFrame", "open_capture",
    "resize_to_max_side",
]
