"""The package's shape: stage packages with declared public faces, and imports that respect them.

A newcomer follows a frame by reading the folder names and one ``__init__`` per stage; these tests
keep that true: each face is pinned here, package code imports other packages only through their
faces (never a private name), and the packages depend on each other in one direction.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "focoos_edge"

# The public face of each stage package (its __all__).
FACES: dict[str, set[str]] = {
    "capture": {
        "CameraSnapshot", "CameraWorker", "CaptureOpenError", "CaptureSettings", "ConversionBuffers",
        "DEFAULT_IM_SIZE", "EncoderUnavailableError", "FrameJob", "FramePrep", "JpegEncoder", "ModelImSize",
        "ScaledFrame", "open_capture",
        "resize_to_max_side",
    },
    "common": {
        "Backoff", "Box", "HourlyRate", "Loop", "MASK", "RedactingFilter", "area", "contains", "iou",
        "package_for", "redact_text", "redact_url", "self_intersection", "tune_malloc", "url_secrets",
        "visible_share", "ReloadAnswers", "request_reload",
        "write_json",
    },
    "config": {
        "CameraConfig", "Config", "ConfigError", "EventsConfig", "FilterConfig", "Source", "ZoneConfig",
        "class_warnings", "config_json_schema", "label_references", "load_config",
    },
    "delivery": {
        "MqttSettings", "PAYLOAD_VERSION", "Publisher", "PublisherSnapshot", "QueueSnapshot", "Spool", "SpoolError",
        "SpoolSnapshot", "SpooledFrame", "TlsConfigError", "Topics", "camera_state_payload", "check_broker",
        "count_topic", "detection_dict", "detections_payload", "dumps", "inference_state_payload", "iso_utc",
        "iso_utc_ns", "keeps", "label_level", "snapshot_topic", "subscribe",
    },
    "inference": {
        "AuthError", "CameraRoute", "Delivery", "Detection", "FocoosClient", "FocoosError",
        "InferenceHealth", "InferenceResult", "LiveQueue", "ModelInfo", "ModelNotFoundError", "QuotaWatch",
        "Uplink", "UplinkCameraSnapshot", "UplinkSnapshot", "scale_detections", "trace_masks",
    },
    "results": {
        "EventFigures", "Results", "ResultsCameraSnapshot", "ResultsSnapshot",
    },
    "service": {
        "Daemon", "StateDirError", "capture_settings", "mqtt_settings", "setup_logging",
    },
    "subscribers": {
        "FeaturesSnapshot", "SubscriberFeatures",
    },
    "tools": {
        "LOCAL_SERVER_IM_SIZE", "LOCAL_SERVER_KEY_ENV", "LOCAL_SERVER_PORT",
    },
}

# Which packages each package may import (the data flows one way; `tools` and the CLI sit on top).
# The results stage feeds the subscriber features (counts, snapshots), so it sits above them.
LAYERS = ["common", "config", "capture", "delivery", "inference", "subscribers", "results", "service", "tools"]


def _package_of(path: Path) -> str | None:
    rel = path.relative_to(PACKAGE).parts
    return rel[0] if len(rel) > 1 else None


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("focoos_edge."):
            yield node


def _modules():
    return [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]


@pytest.mark.parametrize("package", sorted(FACES))
def test_each_stage_has_its_pinned_face(package: str) -> None:
    module = importlib.import_module(f"focoos_edge.{package}")
    assert set(module.__all__) == FACES[package]
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ names what it does not define: {missing}"


def test_every_stage_package_is_pinned() -> None:
    found = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert found == set(FACES)


def test_no_module_imports_another_packages_private_name() -> None:
    bad = [f"{path.relative_to(PACKAGE)}:{node.lineno} {node.module}.{alias.name}"
           for path in _modules() for node in _imports(path) for alias in node.names
           if node.module.split(".")[1] != _package_of(path) and alias.name.startswith("_")]
    assert not bad


def test_other_packages_are_imported_through_their_faces() -> None:
    """`from focoos_edge.capture import FrameJob`, not `from focoos_edge.capture.encode import ...`,
    across packages (inside a package, modules import each other directly). `tools` is exempt:
    its modules load OpenCV, so the CLI imports them where a command runs."""
    bad = []
    for path in _modules():
        me = _package_of(path)
        for node in _imports(path):
            parts = node.module.split(".")
            if len(parts) > 2 and parts[1] != me and parts[1] != "tools":
                bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno} from {node.module}")
    assert not bad


def test_packages_depend_in_one_direction() -> None:
    bad = []
    for path in _modules():
        me = _package_of(path)
        if me is None:  # cli.py, __main__.py: the top
            continue
        for node in _imports(path):
            other = node.module.split(".")[1]
            if other != me and LAYERS.index(other) > LAYERS.index(me):
                bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {me} imports {other}")
    assert not bad


LEASE_CALLS = {"take_frame", "release_frame", "drop_frame"}


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield node


def test_only_the_uplink_takes_gives_back_or_drops_spool_leases() -> None:
    """A lease is taken and ended in one module. The one other end of a lease is its consumption with
    the result's outbox row (`done_frame=`, one transaction in the spool), which the results stage
    asks for when it stores a detections message."""
    lease_calls: dict[str, set[str]] = {}
    done_frame: set[str] = set()
    for path in _modules():
        for call in _calls(path):
            if call.func.attr in LEASE_CALLS:  # type: ignore[attr-defined]
                lease_calls.setdefault(str(path.relative_to(PACKAGE)), set()).add(call.func.attr)  # type: ignore[attr-defined]
            if any(keyword.arg == "done_frame" for keyword in call.keywords):
                done_frame.add(str(path.relative_to(PACKAGE)))
    assert lease_calls == {"inference/uplink.py": LEASE_CALLS}
    assert done_frame == {"results/stage.py"}
