"""Per-label counts: only changes are published, a label that disappears goes to 0 once, and the
retained topics always end up holding the camera's current counts."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from focoos_edge.delivery import contract
from focoos_edge.delivery.messages import Topics
from focoos_edge.subscribers.counts import CountTracker

BASE = Topics("focoos", "edge-01").base


def topic(label: str) -> str:
    return f"focoos/edge-01/front_door/{label}"


def test_counts_go_up_and_back_to_zero_once():
    tracker = CountTracker(BASE, "front_door")
    assert tracker.update(["person"]) == [(topic("person"), 1)]
    assert tracker.update(["person", "person", "car"]) == [(topic("person"), 2), (topic("car"), 1)]
    assert tracker.update(["person", "car", "person"]) == []  # nothing changed
    assert tracker.update(["car"]) == [(topic("person"), 0)]
    assert tracker.update([]) == [(topic("car"), 0)]
    assert tracker.update([]) == []  # 0 is not re-published
    assert tracker.update(["person"]) == [(topic("person"), 1)]
    assert tracker.counts() == {"person": 1, "car": 0}


def test_configured_labels_start_at_zero_so_stale_retained_counts_are_overwritten():
    tracker = CountTracker(BASE, "front_door", labels=["person", "car", "person"])
    assert tracker.update(["dog"]) == [(topic("person"), 0), (topic("car"), 0), (topic("dog"), 1)]
    assert tracker.update(["dog"]) == []


def test_unlabelled_detections_are_not_counted():
    tracker = CountTracker(BASE, "front_door")
    assert tracker.update([None, None]) == []
    assert tracker.update([None, "cat"]) == [(topic("cat"), 1)]


def test_a_result_older_than_one_already_counted_is_ignored():
    tracker = CountTracker(BASE, "front_door")
    assert tracker.update(["person", "person"], captured_at_ns=2_000) == [(topic("person"), 2)]
    assert tracker.update([], captured_at_ns=1_000) == []  # finished late: the scene moved on
    assert tracker.update(["person"], captured_at_ns=2_000) == [(topic("person"), 1)]
    assert tracker.update([], captured_at_ns=3_000) == [(topic("person"), 0)]


def test_clear_sets_every_count_to_zero():
    tracker = CountTracker(BASE, "front_door")
    tracker.update(["person", "car"])
    assert tracker.clear() == [(topic("person"), 0), (topic("car"), 0)]
    assert tracker.clear() == []


def test_labels_become_safe_topic_levels():
    tracker = CountTracker(BASE, "front_door")
    assert tracker.update(["traffic light", "state"]) == [(topic("traffic_light"), 1), (topic("state_label"), 1)]


def test_published_counts_validate_against_the_count_schema():
    tracker = CountTracker(BASE, "front_door", labels=["person"])
    for labels in (["person"] * 3, []):
        for t, count in tracker.update(labels):
            kind = contract.classify_topic(t, "focoos")
            assert kind.kind == "count" and kind.camera == "front_door"
            contract.validate_payload(kind.schema, str(count).encode())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["person", "car", "dog", None]), max_size=6), max_size=12))
def test_the_retained_topics_always_hold_the_current_counts(messages):
    tracker = CountTracker(BASE, "front_door", labels=["person"])
    retained: dict[str, int] = {}
    seen: set[str] = {"person"}
    for labels in messages:
        changes = tracker.update(labels)
        assert len({t for t, _ in changes}) == len(changes)  # one value per topic per message
        assert all(retained.get(t) != n for t, n in changes)  # only real changes
        retained.update(changes)
        now = Counter(label for label in labels if label)
        seen |= set(now)
        assert retained == {topic(label): now.get(label, 0) for label in seen}


def test_distinct_labels_are_capped_but_configured_and_known_ones_still_count():
    tracker = CountTracker("focoos/box1", "cam", labels=["person"], max_labels=3)
    first = tracker.update(["person", "a", "b", "c", "d"])
    assert {topic.rsplit("/", 1)[1] for topic, _ in first} == {"person", "a", "b"}
    assert tracker.labels_dropped == 2
    # Known labels keep counting (and going back to 0); new ones still find no room.
    again = dict(tracker.update(["a", "a", "e"]))
    assert again == {"focoos/box1/cam/person": 0, "focoos/box1/cam/a": 2, "focoos/box1/cam/b": 0}
    assert tracker.labels_dropped == 3 and len(tracker.counts()) == 3
