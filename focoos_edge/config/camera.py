"""The model of one `cameras[]` entry (source, sampling, upload size, privacy masks and crop,
thresholds, snapshots, zones, filters, events)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    StringConstraints,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from focoos_edge.common import redact_url, visible_share
from focoos_edge.config.load import (
    located_error,
    resolve_path,
)
from focoos_edge.config.results import ZONE_NAME, EventsOverride, FilterConfig, ZoneConfig
from focoos_edge.config.sources import Source, parse_source
from focoos_edge.config.types import (
    MaxSide,
    NonEmpty,
    PrivacyPolygon,
    Unit,
    _Model,
)


class SnapshotConfig(_Model):
    """Annotated snapshots of a camera, published retained as JPEG on .../<camera>/snapshot."""

    labels: tuple[NonEmpty, ...] | None = Field(
        None, min_length=1, description="Labels that trigger a snapshot (default: any detection).")
    height: int | None = Field(
        None, ge=64, le=2160, description="Height of the snapshot (default: the uploaded frame's).")
    quality: int = Field(70, ge=1, le=100, description="JPEG quality of the snapshot.")
    min_interval_s: float = Field(2.0, ge=0, le=86400, description="At most one snapshot per this many seconds.")



class CameraConfig(_Model):
    """One camera."""

    name: str = Field(pattern=r"^[a-z0-9_-]+$", description="Unique name; an MQTT topic level.")
    source: str = Field(
        repr=False, description="rtsp(s)://..., http(s)://..., usb:N, /dev/videoN, file:///path or a path."
    )
    sample_fps: float = Field(2, gt=0, le=30, description="Frames sent to inference per second.")
    max_side: MaxSide = Field(
        "auto", description="Longest side of the uploaded JPEG; 'auto': the model's im_size (640 when the "
                            "model does not say), since the server resizes every upload to it anyway.")
    jpeg_quality: int = Field(80, ge=1, le=100, description="JPEG quality of uploads.")
    threshold: float | None = Field(None, ge=0, le=1, description="Overrides inference.threshold.")
    labels: tuple[NonEmpty, ...] | None = Field(None, min_length=1, description="Publish only these labels.")
    thresholds: dict[NonEmpty, Annotated[float, Field(ge=0, le=1)]] | None = Field(
        None, description="Per-label confidence thresholds, e.g. {person: 0.6, car: 0.4}; the request "
                          "asks for the lowest, each label is filtered on the box.")
    snapshot: SnapshotConfig | None = Field(None, description="Annotated snapshots (off by default).")
    counts: bool = Field(True, description="Publish retained per-label counts on .../<camera>/<label>.")
    loop: bool = Field(True, description="File sources restart at the end.")
    open_timeout_s: float = Field(10, gt=0, le=300, description="Timeout to open the source.")
    read_timeout_s: float = Field(10, gt=0, le=300, description="A source silent this long is reopened.")
    decode: Literal["all", "keyframes"] = Field(
        "all", description="'keyframes': decode only keyframes (needs the 'keyframes' extra, PyAV); far less "
                           "CPU when sample_fps is at or below the stream's keyframe rate. Files and streams only.")
    decode_threads: int = Field(
        1, ge=0, le=16, description="FFmpeg decoder threads (0: OpenCV's choice, one per core). One is enough "
                                    "up to 1080p and keeps frames fresher and memory lower (docs/performance.md).")
    usb_mjpeg: bool = Field(False, description="USB cameras: ask for MJPEG and decode sampled frames scaled "
                                                "down by TurboJPEG instead of decoding every frame in full.")
    motion_threshold: float | None = Field(
        None, gt=0, le=255, description="Skip frames whose scene did not change: mean absolute grey-level "
                                        "difference to the last sent frame (e.g. 2.0); null: off.")
    motion_heartbeat_s: float = Field(60, gt=0, le=86400, description="With motion_threshold: a static scene is still "
                                                             "sent this often.")
    max_inferences_per_hour: int | None = Field(
        None, ge=1, description="Hourly inference budget of this camera; frames beyond it are skipped (counted).")
    privacy_masks: tuple[PrivacyPolygon, ...] = Field(
        (), description="Polygons of [x, y] points (normalized 0..1, x right, y down) filled black before "
                        "encoding: never uploaded, never in a snapshot.")
    crop: tuple[Unit, Unit, Unit, Unit] | None = Field(
        None, description="Region of interest [x1, y1, x2, y2] (normalized): only it is uploaded; boxes "
                          "still come back in original-frame pixels.")
    masks: Literal["polygons", "none"] = Field(
        "polygons", description="Segmentation masks in detection payloads: 'polygons' (traced outlines in "
                                "original-frame pixels) or 'none'.")
    # Results stage (focoos_edge/config/results.py).
    zones: dict[Annotated[str, StringConstraints(pattern=ZONE_NAME)], ZoneConfig] = Field(
        default_factory=dict, description="Named zones ([a-z0-9_-]+): polygons normalized to the frame.")
    filters: dict[NonEmpty, FilterConfig] = Field(
        default_factory=dict, description="Per label, or '*' for every label: detections outside are dropped.")
    events: EventsOverride | None = Field(None, description="Overrides of the top-level events settings.")

    @field_validator("source")
    @classmethod
    def _parse_source(cls, value: str, info: ValidationInfo) -> str:
        source = parse_source(value)
        if source.kind == "file" and not os.path.isabs(source.uri):
            return str(resolve_path(Path(source.uri), info))
        return value.strip()

    @model_validator(mode="after")
    def _decode_fits_source(self) -> CameraConfig:
        if self.decode == "keyframes":
            if self.parsed_source.kind == "usb":
                raise located_error(("decode",), "decode_usb",
                                    "'keyframes' is for files and network streams (use usb_mjpeg for USB cameras)")
            if importlib.util.find_spec("av") is None:
                raise located_error(("decode",), "decode_pyav",
                                    "'keyframes' needs PyAV: pip install 'focoos-edge[keyframes]'")
        return self

    @model_validator(mode="after")
    def _something_to_upload(self) -> CameraConfig:
        if self.crop is not None:
            x1, y1, x2, y2 = self.crop
            if not (x1 < x2 and y1 < y2):
                raise located_error(("crop",), "crop_empty", "must be [x1, y1, x2, y2] with x1 < x2 and y1 < y2")
        if self.privacy_masks and visible_share(self.privacy_masks, self.crop or (0.0, 0.0, 1.0, 1.0)) == 0.0:
            where = "the crop" if self.crop is not None else "the frame"
            raise located_error(("privacy_masks",), "masked_out", f"the masks cover all of {where}: nothing "
                                                                  "would be left to upload")
        return self

    @property
    def fixed_max_side(self) -> int | None:
        """The configured upload side, or None for 'auto' (the model's im_size)."""
        return None if self.max_side == "auto" else int(self.max_side)

    @field_serializer("source", when_used="json")
    def _redact_source(self, value: str) -> str:
        return redact_url(value)

    @property
    def parsed_source(self) -> Source:
        """The parsed :class:`~focoos_edge.config.sources.Source` (kind, uri, device)."""
        return parse_source(self.source)


