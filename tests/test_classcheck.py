"""Class checks: config keys naming classes the model does not have (pure)."""

from __future__ import annotations

from focoos_edge.config.classcheck import class_warnings


def test_unknown_labels_are_named_with_their_closest_classes() -> None:
    refs = [("door", "labels", "person"), ("door", "labels", "preson"), ("yard", "thresholds.cars", "cars"),
            ("yard", "filters.*", "*"), ("yard", "zones.drive.labels", "zebra-crossing")]
    assert class_warnings(refs, ["person", "car", "truck"], "m1") == [
        "camera door: labels: 'preson' is not a class of model m1 (closest: person)",
        "camera yard: thresholds.cars: 'cars' is not a class of model m1 (closest: car)",
        "camera yard: zones.drive.labels: 'zebra-crossing' is not a class of model m1 (no similar class)",
    ]


def test_a_model_without_a_class_list_gives_no_warnings() -> None:
    assert class_warnings([("door", "labels", "preson")], [], "m1") == []
