"""The labeler's rules (issue 24): pre-label proposals never remove a box, class edits keep
every box's class, new boxes take the picked class, half-drawn boxes are ignored."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tabs.yolo import ui
from tabs.yolo.dataset import DatasetStore, class_remap
from tabs.yolo.formats import Box


@pytest.fixture
def ds(tmp_path):
    d = DatasetStore(tmp_path / "datasets").create("d", classes=["person", "car", "dog"])
    p = tmp_path / "x.png"
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(p)
    d.add_image(p)
    d.set_boxes("x.png", [Box(0, 1, 1, 10, 10), Box(1, 20, 20, 40, 40), Box(2, 5, 30, 15, 45)])
    return d


def _names(d):
    return [d.classes[b.cls] for b in d.boxes("x.png")]


def test_rename_keeps_the_files_and_reorder_remaps_them(ds):
    label = ds.labels_dir / "x.txt"
    before = label.read_text()
    ds.set_classes(["human", "car", "dog"])  # rename in place
    assert label.read_text() == before and _names(ds) == ["human", "car", "dog"]
    ds.set_classes(["dog", "human", "car"])  # reorder: every box keeps its class
    assert _names(ds) == ["human", "car", "dog"]
    assert [ln.split()[0] for ln in label.read_text().splitlines()] == ["1", "2", "0"]
    ds.set_classes(["dog", "human", "car", "cat"])  # append
    assert _names(ds) == ["human", "car", "dog"]
    with pytest.raises(ValueError, match="still used"):
        ds.set_classes(["dog", "human"])  # 'car' is used
    assert _names(ds) == ["human", "car", "dog"]


def test_class_remap_rules():
    assert class_remap(["a", "b"], ["b", "a"]) == {0: 1, 1: 0}
    assert class_remap(["a", "b"], ["x", "b"]) == {0: 0, 1: 1}  # rename a -> x
    assert class_remap(["a", "b"], ["b", "c"]) == {1: 0}  # a removed, c new
    assert class_remap(["a", "b"], ["a", "b", "c"]) == {0: 0, 1: 1}


def test_proposals_never_remove_or_duplicate_a_users_box():
    mine = [Box(0, 0, 0, 10, 10), Box(1, 20, 20, 30, 30)]
    proposed = [Box(0, 1, 1, 10, 10), Box(1, 40, 40, 50, 50), Box(0, 20, 20, 30, 30)]
    new = ui.merge_proposals(mine, proposed)
    assert new == [Box(1, 40, 40, 50, 50), Box(0, 20, 20, 30, 30)]  # other class: kept
    assert ui.merge_proposals(mine, []) == []


def test_new_boxes_take_the_picked_class_and_the_canvas_echo_is_undone():
    stored = [Box(0, 1, 1, 10, 10)]
    drawn = Box(0, 20, 20, 40, 40)
    # the canvas sends a new box first, without a label ...
    items = [{"label": "", **_corners(drawn)}, {"label": "person", **_corners(stored[0])}]
    boxes, fresh = ui.assign_new_boxes(items, [drawn, stored[0]], stored, 2, None, 100.0)
    assert boxes == [Box(2, 20, 20, 40, 40), stored[0]] and fresh[0].cls == 2
    # ... then labels it with the last label of its pop-up ('person'): undone, it stays 'dog'
    saved = boxes
    echo = [Box(0, 20, 20, 40, 40), stored[0]]
    items = [{"label": "person", **_corners(b)} for b in echo]
    boxes, _ = ui.assign_new_boxes(items, echo, saved, 2, fresh, 101.0)
    assert boxes == saved
    # the echo comes once: a relabel right after it, through the pop-up, is the user's choice
    boxes, fresh = ui.assign_new_boxes(items, echo, saved, 2, fresh, 101.0)
    relabel = [Box(1, 20, 20, 40, 40), Box(1, 1, 1, 10, 10)]
    items = [{"label": "car", **_corners(relabel[0])}, {"label": "car", **_corners(relabel[1])}]
    boxes, _ = ui.assign_new_boxes(items, relabel, saved, 2, fresh, 101.5)
    assert fresh is None and boxes == relabel
    # the extra first box that matches nothing stored is new even with a label on it
    items = [{"label": "person", **_corners(drawn)}, {"label": "person", **_corners(stored[0])}]
    boxes, _ = ui.assign_new_boxes(items, [drawn, stored[0]], stored, 1, None, 200.0)
    assert boxes[0].cls == 1


def test_a_half_drawn_box_is_ignored_not_an_error():
    assert ui._degenerate({"xmin": 5, "ymin": 5, "xmax": 5, "ymax": 5})
    assert ui._degenerate({"xmin": 5, "ymin": 5, "xmax": 30, "ymax": 5.4})
    assert not ui._degenerate({"xmin": 5, "ymin": 5, "xmax": 30, "ymax": 20})


def test_one_colour_per_class_on_canvas_and_legend(tmp_path, ds):
    from tabs.yolo.service import YoloService
    from tests.unit.test_yolo_annotator import _FakeStudio

    svc = YoloService(_FakeStudio(tmp_path))
    svc.store = DatasetStore(ds.root.parent)
    value = ui._annot_value(svc, "d", "x.png")
    colours = [b["color"] for b in value["boxes"]]
    assert len(set(colours)) == 3
    assert colours[0] == ui._rgb(ui.class_colour(0))
    legend = ui.legend_html(ds.classes)
    assert all(ui.class_colour(i) in legend for i in range(3)) and "<b>3</b> dog" in legend


def _corners(b):
    return {"xmin": b.x1, "ymin": b.y1, "xmax": b.x2, "ymax": b.y2}
