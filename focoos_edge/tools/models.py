"""The local server's models: the refs it serves, their list and info answers, and inference with
the ArUco detector of ``aruco.py`` (one per handler thread), answered as each model's task does.

Inference spends the account's :class:`~focoos_edge.tools.account.Quota` (429 once it is used up),
after the image is decoded and before the detector runs.
"""

from __future__ import annotations

import threading
import time

import cv2

from focoos_edge.tools.account import Quota
from focoos_edge.tools.aruco import CLASSES, DETECTION, MODEL_TASKS, detect_markers, new_detector
from focoos_edge.tools.upload import decode_image, extract_form_file, parse_threshold

DEFAULT_MODEL_REF = "local-aruco"
MODEL_DESCRIPTION = "ArUco DICT_4X4_50 marker detector (OpenCV, CPU)"


class Models:
    """The models ``refs``, all with ``im_size`` in their info and ``created_at`` as their dates."""

    def __init__(self, refs: tuple[str, ...], im_size: int | list[int], created_at: str, quota: Quota) -> None:
        self._refs = refs
        self._im_size = im_size
        self._created_at = created_at
        self._quota = quota
        self._detectors = threading.local()  # one detector per handler thread: no shared C++ state

    def listing(self) -> tuple[int, list[dict]]:
        """The ``GET models/`` answer."""
        return 200, [{"ref": ref, "name": ref, "task": MODEL_TASKS.get(ref, DETECTION),
                      "status": "TRAINING_COMPLETED",
                      "description": MODEL_DESCRIPTION, "focoos_model": ref} for ref in self._refs]

    def info(self, ref: str) -> tuple[int, dict]:
        """The ``GET models/{ref}`` answer."""
        if ref not in self._refs:
            return 404, {"detail": "Model not found"}
        return 200, {
            "ref": ref, "name": ref, "task": MODEL_TASKS.get(ref, DETECTION), "status": "TRAINING_COMPLETED",
            "description": MODEL_DESCRIPTION, "classes": list(CLASSES), "im_size": self._im_size,
            "is_managed": False, "owner_ref": "local", "focoos_model": ref, "model_family": "opencv_aruco",
            "created_at": self._created_at, "updated_at": self._created_at,
        }

    def _detector(self) -> cv2.aruco.ArucoDetector:
        detector = getattr(self._detectors, "detector", None)
        if detector is None:
            detector = new_detector()
            self._detectors.detector = detector
        return detector

    def infer(self, ref: str, query: str, content_type: str, body: bytes) -> tuple[int, dict]:
        """The ``POST models/{ref}/inference`` answer: 200 with detections and latency, or an error."""
        if ref not in self._refs:
            return 404, {"detail": "Model not found"}
        try:
            threshold = parse_threshold(query)
            image_bytes = extract_form_file(content_type, body)
        except ValueError as exc:  # UploadError included
            return 422, {"detail": str(exc)}
        started = time.perf_counter()
        image = decode_image(image_bytes)
        if image is None:
            return 400, {"detail": "Invalid image: cannot decode the uploaded file"}
        decoded = time.perf_counter()
        if not self._quota.spend():
            used, maximum = self._quota.snapshot()
            return 429, {"detail": f"Inference quota exhausted ({used} of {maximum} used)"}
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        preprocessed = time.perf_counter()
        found = detect_markers(self._detector(), grey, MODEL_TASKS.get(ref, DETECTION))
        inferred = time.perf_counter()
        detections = [d for d in found if d["conf"] > threshold]
        done = time.perf_counter()
        return 200, {"detections": detections, "latency": {
            "imload": round(decoded - started, 6), "preprocess": round(preprocessed - decoded, 6),
            "inference": round(inferred - preprocessed, 6), "postprocess": round(done - inferred, 6)}}
