"""The local server's "model": OpenCV ArUco markers (dictionary ``DICT_4X4_50``).

Pure helpers with no HTTP: :func:`draw_markers` puts markers into a frame (tests, the demo),
:func:`detect_markers` finds them and answers in the Focoos detection format.
"""

from __future__ import annotations

import base64
import math

import cv2
import numpy as np

NUM_MARKER_IDS = 50  # DICT_4X4_50
CLASSES = tuple(f"aruco_{i}" for i in range(NUM_MARKER_IDS))
# The local "models": one detector, answered the way each Focoos task answers.
DETECTION, INSTSEG, KEYPOINT, CLASSIFICATION = "detection", "instseg", "keypoint", "classification"
MODEL_TASKS = {"local-aruco": DETECTION, "local-aruco-seg": INSTSEG, "local-aruco-kp": KEYPOINT,
               "local-aruco-cls": CLASSIFICATION}


def _aruco_dictionary() -> cv2.aruco.Dictionary:
    return cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50)


def new_detector() -> cv2.aruco.ArucoDetector:
    """A detector for ``DICT_4X4_50`` with default parameters (not thread-safe: one per thread)."""
    return cv2.aruco.ArucoDetector(_aruco_dictionary(), cv2.aruco.DetectorParameters())


def draw_markers(frame: np.ndarray, markers: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Draw ArUco markers (``DICT_4X4_50``) into ``frame`` in place and return it.

    Each marker is ``(marker_id, x, y, size)``: marker ``marker_id`` drawn ``size`` x ``size``
    pixels with its top-left corner at ``(x, y)``. A white quiet zone of one module (``size / 6``)
    is painted around it (clipped to the frame; keep markers that far apart) so it is detectable
    on any background. The
    detector reports it at about ``[x, y, x + size - 1, y + size - 1]``, times any resize factor.
    Raises ``ValueError`` if a marker does not fit in the frame or its id/size is invalid.
    """
    dictionary = _aruco_dictionary()
    height, width = frame.shape[:2]
    for marker_id, x, y, size in markers:
        if not 0 <= marker_id < NUM_MARKER_IDS:
            raise ValueError(f"marker id {marker_id} outside 0..{NUM_MARKER_IDS - 1}")
        if size < 6:  # 4x4 bits + 1-bit border on each side: smaller cannot be drawn
            raise ValueError(f"marker size {size} px is below the minimum of 6 px")
        if x < 0 or y < 0 or x + size > width or y + size > height:
            raise ValueError(f"marker {marker_id} at ({x}, {y}) size {size} does not fit {width}x{height}")
        quiet_px = max(1, size // 6)
        white = 255 if frame.ndim == 2 else (255,) * frame.shape[2]
        frame[max(0, y - quiet_px):y + size + quiet_px, max(0, x - quiet_px):x + size + quiet_px] = white
        tile = cv2.aruco.generateImageMarker(dictionary, marker_id, size)
        frame[y:y + size, x:x + size] = tile if frame.ndim == 2 else tile[:, :, None]
    return frame

def quad_mask_png(points: np.ndarray) -> str:
    """The marker's quad as a base64 0/255 PNG cropped to its box, origin at (floor(x1), floor(y1)),
    as Focoos segmentation models send masks."""
    x0, y0 = (math.floor(v) for v in points.min(axis=0))
    x1, y1 = (math.ceil(v) for v in points.max(axis=0))
    canvas = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    cv2.fillPoly(canvas, [np.round(points - (x0, y0)).astype(np.int32)], 255)
    ok, png = cv2.imencode(".png", canvas)
    return base64.b64encode(png.tobytes()).decode("ascii") if ok else ""


def answer(found: dict, points: np.ndarray, task: str) -> dict:
    """A detection answered as ``task`` does: classification has no box; instseg adds a mask
    and keypoints at the quad's corners; keypoint adds the keypoints."""
    if task == CLASSIFICATION:
        return {k: found[k] for k in ("conf", "cls_id", "label")}
    out = dict(found)
    if task in (INSTSEG, KEYPOINT):
        out["keypoints"] = [[round(float(x), 1), round(float(y), 1), 1.0] for x, y in points]
    if task == INSTSEG:
        out["mask"] = quad_mask_png(points)
    return out


def detect_markers(detector: cv2.aruco.ArucoDetector, image: np.ndarray, task: str = DETECTION) -> list[dict]:
    """Run ``detector`` on a BGR or grey image and return Focoos-style detections (no filtering),
    answered as the model ``task`` would (see :func:`answer`)."""
    if hasattr(detector, "detectMarkersWithConfidence"):
        corners, ids, scores, _ = detector.detectMarkersWithConfidence(image)
    else:  # OpenCV < 4.12 has no per-marker confidence: every decoded marker is certain.
        corners, ids, _ = detector.detectMarkers(image)
        scores = None if ids is None else np.ones(len(ids), np.float32)
    if ids is None:
        return []
    detections = []
    for quad, marker_id, score in zip(corners, ids.flatten(), np.asarray(scores).flatten(), strict=True):
        points = quad.reshape(-1, 2)
        x1, y1 = points.min(axis=0)
        x2, y2 = points.max(axis=0)
        detections.append(answer({
            "bbox": [round(float(v), 1) for v in (x1, y1, x2, y2)],
            "conf": round(float(score), 4),
            "cls_id": int(marker_id),
            "label": CLASSES[int(marker_id)],
        }, points, task))
    return detections
