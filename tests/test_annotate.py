"""Annotated snapshots: palette colours by class id, masks where the PNG says (bbox-cropped and
full-frame, clipped), `label NN%` tags, resizing, and real JPEGs in and out."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from focoos_edge.capture.encode import JpegEncoder
from focoos_edge.inference.parse import Detection
from focoos_edge.subscribers.annotate import (
    MASK_ALPHA,
    PALETTE_BGR,
    PALETTE_HEX,
    SnapshotError,
    SnapshotGate,
    annotate,
    colour_for,
    hex_to_bgr,
    label_text,
    render_snapshot,
)

GREY = 128


def grey(width: int = 640, height: int = 360) -> np.ndarray:
    return np.full((height, width, 3), GREY, np.uint8)


def png_b64(mask: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    assert ok
    return base64.b64encode(buf.tobytes()).decode()


def det(bbox, cls_id=0, label="person", conf=0.91, mask=None) -> dict:
    d = {"label": label, "cls_id": cls_id, "conf": conf, "bbox": bbox}
    if mask is not None:
        d["mask"] = mask
    return d


def tinted(colour) -> np.ndarray:
    """What a grey pixel becomes under a mask of `colour`."""
    return (GREY * (1 - MASK_ALPHA) + np.asarray(colour, np.float32) * MASK_ALPHA).astype(np.uint8)


def test_the_palette_is_the_focoos_one_in_bgr():
    assert PALETTE_HEX == ("#015fe6", "#3faebd", "#63dba6", "#a151ff", "#df923a")
    assert hex_to_bgr("#015fe6") == (0xE6, 0x5F, 0x01)
    assert [colour_for(i) for i in range(7)] == [*PALETTE_BGR, PALETTE_BGR[0], PALETTE_BGR[1]]
    assert colour_for(None) == PALETTE_BGR[0]


@pytest.mark.parametrize("cls_id", range(6))
def test_box_pixels_carry_the_palette_colour_of_the_class(cls_id):
    img = grey()
    out = annotate(img, [det([100, 120, 300, 250], cls_id=cls_id)])
    colour = tuple(PALETTE_BGR[cls_id % 5])
    for x, y in ((100, 200), (300, 200), (200, 250)):  # left, right and bottom edges
        assert tuple(out[y, x]) == colour, (x, y)
    assert tuple(out[200, 200]) == (GREY,) * 3  # inside the box: untouched
    assert (img == GREY).all()  # the input is not modified


def test_the_tag_says_label_and_percent_in_the_class_colour():
    assert label_text("person", 0, 0.914) == "person 91%"
    assert label_text(None, 3, 0.5) == "class 3 50%"
    assert label_text("caf\u00e9", 1, 1.0) == "caf? 100%"
    out = annotate(grey(), [det([100, 120, 300, 250], cls_id=0), det([400, 200, 500, 300], cls_id=2)])
    # Above the first box: a tag filled with palette[0] and white text on it.
    tag = out[102:119, 100:160].reshape(-1, 3)
    assert (tag == PALETTE_BGR[0]).all(axis=1).sum() > tag.shape[0] // 2
    assert (tag.min(axis=1) > 200).sum() > 10  # white glyph pixels
    # palette[2] is light: its tag has dark text.
    tag2 = out[182:199, 400:460].reshape(-1, 3)
    assert (tag2 == PALETTE_BGR[2]).all(axis=1).sum() > tag2.shape[0] // 2
    assert (tag2.max(axis=1) < 60).sum() > 10


def test_a_bbox_cropped_mask_is_filled_where_the_png_says():
    mask = np.zeros((100, 200), bool)
    mask[20:60, 30:90] = True  # a rectangle inside the box
    out = annotate(grey(), [det([100, 120, 300, 220], cls_id=3, mask=png_b64(mask))])
    expected = tinted(PALETTE_BGR[3])
    region = out[120:220, 100:300]
    assert (region[25:55, 35:85] == expected).all()
    assert (region[70:95, 120:190] == GREY).all()  # in the box, outside the mask
    assert (out[300:, :] == GREY).all()


def test_a_full_frame_mask_from_an_older_server_is_placed_at_the_origin():
    mask = np.zeros((360, 640), bool)
    mask[200:240, 420:480] = True
    out = annotate(grey(), [det([410, 190, 490, 250], cls_id=1, mask=png_b64(mask))])
    expected = tinted(PALETTE_BGR[1])
    assert (out[205:235, 425:475] == expected).all()
    assert (out[300:, :] == GREY).all()


def test_a_mask_past_the_frame_edge_is_clipped():
    mask = np.ones((80, 120), bool)
    out = annotate(grey(), [det([580, 320, 700, 400], cls_id=4, mask=png_b64(mask))])
    assert out.shape == (360, 640, 3)
    assert (out[330:358, 585:638] == tinted(PALETTE_BGR[4])).all()


def test_a_broken_mask_still_gets_its_box():
    for broken in ("not base64 at all!", base64.b64encode(b"not a png").decode()):
        out = annotate(grey(), [det([100, 120, 300, 250], mask=broken)])
        assert tuple(out[200, 100]) == PALETTE_BGR[0]
        assert tuple(out[200, 200]) == (GREY,) * 3


def test_boxes_in_original_pixels_are_scaled_onto_the_uploaded_image():
    # A 1280x720 frame uploaded at 640x360 (scale 0.5): boxes in frame pixels, masks in upload pixels.
    mask = np.zeros((50, 100), bool)
    mask[10:40, 10:90] = True
    out = annotate(grey(), [det([200, 240, 400, 340], cls_id=1, mask=png_b64(mask))], scale=0.5)
    assert tuple(out[150, 100]) == PALETTE_BGR[1]  # left edge at 200 * 0.5
    assert (out[132:158, 112:188] == tinted(PALETTE_BGR[1])).all()  # mask rows 10:40 at y 120
    assert (out[122:128, 112:188] == GREY).all()


def test_height_resizes_the_picture_and_everything_drawn_on_it():
    mask = np.zeros((100, 200), bool)
    mask[20:60, 30:90] = True
    out = annotate(grey(), [det([100, 120, 300, 220], cls_id=3, mask=png_b64(mask))], height=720)
    assert out.shape == (720, 1280, 3)
    assert tuple(out[340, 200]) == PALETTE_BGR[3]  # left edge at 100 * 2
    assert (out[290:350, 270:370] == tinted(PALETTE_BGR[3])).all()  # mask (150..210, 260..380) * 2


def test_detections_without_a_box_are_listed_in_the_corner():
    out = annotate(grey(), [det(None, cls_id=2, label="cat", conf=0.7)])
    corner = out[0:20, 0:40].reshape(-1, 3)
    assert (corner == PALETTE_BGR[2]).all(axis=1).sum() > corner.shape[0] // 2


def test_focoos_detection_objects_work_like_message_dicts():
    objs = [Detection(label="car", cls_id=1, conf=0.8, bbox=(100.0, 120.0, 300.0, 250.0))]
    dicts = [det([100.0, 120.0, 300.0, 250.0], cls_id=1, label="car", conf=0.8)]
    assert (annotate(grey(), objs) == annotate(grey(), dicts)).all()


def test_render_snapshot_round_trips_real_jpegs():
    encoder = JpegEncoder()
    frame = grey()
    cv2.circle(frame, (500, 80), 40, (0, 0, 255), -1)  # some real picture content
    jpeg = encoder.encode(frame, 85)
    out_jpeg = render_snapshot(jpeg, [det([100, 120, 300, 250], cls_id=4)], height=720, quality=90)
    assert out_jpeg[:3] == b"\xff\xd8\xff"
    out = cv2.imdecode(np.frombuffer(out_jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert out.shape == (720, 1280, 3)
    # The middle of the (4 px) left edge, away from the tag: the palette colour survives JPEG.
    edge = out[400:460, 199:201].reshape(-1, 3).astype(int)
    assert (abs(edge - PALETTE_BGR[4]).max(axis=1) < 40).all()
    assert abs(out[160, 1000].astype(int) - (0, 0, 255)).max() < 40  # the circle, scaled
    with pytest.raises(SnapshotError):
        render_snapshot(b"not a jpeg", [])


def test_annotate_rejects_what_is_not_a_bgr_image():
    with pytest.raises(SnapshotError):
        annotate(np.zeros((10, 10), np.uint8), [])


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_snapshot_gate_needs_a_trigger_label_and_respects_the_interval():
    clock = Clock()
    gate = SnapshotGate(labels=["person"], min_interval_s=5.0, clock=clock)
    assert not gate.due([])
    assert not gate.due(["car"])
    assert gate.due(["car", "person"])
    clock.now += 4.9
    assert not gate.due(["person"])
    clock.now += 0.2
    assert gate.due(["person"])
    any_label = SnapshotGate(min_interval_s=0, clock=clock)
    assert not any_label.due([])
    assert any_label.due([None]) and any_label.due(["car"])
