"""Grounding: boxes in Qwen2.5-VL / Qwen2-VL / fraction answers land on the right pixels of the
original picture, are drawn, and reach the YOLO labeler's dataset as pre-labels."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tabs.vlm import service
from tabs.vlm.grounding import boxes_from_json, draw_boxes, parse_boxes

QWEN25 = """Here you go:
```json
[
  {"bbox_2d": [100, 50, 300, 250], "label": "red circle"},
  {"bbox_2d": [400, 50, 500, 150], "label": "blue square"}
]
```"""


def test_qwen25_absolute_boxes_are_scaled_from_the_models_input_size():
    # the model saw the 1280x840 picture resized to 640x420: its pixels are half the size
    boxes = parse_boxes(QWEN25, (1280, 840), model_size=(640, 420))
    assert [(b.label, b.x1, b.y1, b.x2, b.y2) for b in boxes] == [
        ("red circle", 200, 100, 600, 500), ("blue square", 800, 100, 1000, 300)]


def test_qwen2_thousand_grid_and_fraction_boxes_and_junk():
    q2 = "the cat(100,200),(500,800) and the dog (600,100),(900,400)"
    boxes = parse_boxes(q2, (1000, 500))
    assert [(b.label, b.x1, b.y1, b.x2, b.y2) for b in boxes] == [
        ("the cat", 100, 100, 500, 400), ("and the dog", 600, 50, 900, 200)]
    frac = parse_boxes("cup: [0.1, 0.2, 0.5, 0.6]", (200, 100))
    assert [(b.label, b.x1, b.y1, b.x2, b.y2) for b in frac] == [("cup", 20, 20, 100, 60)]
    assert parse_boxes("There are three circles.", (10, 10)) == []
    # off-picture and inverted corners are clipped and sorted; zero-area boxes dropped
    odd = parse_boxes('[{"bbox_2d": [700, 300, -5, 10], "label": "x"}, '
                      '{"bbox_2d": [5, 5, 5, 9], "label": "flat"}]', (640, 420))
    assert [(b.x1, b.y1, b.x2, b.y2) for b in odd] == [(0, 10, 640, 300)]


def test_client_boxes_are_checked():
    assert boxes_from_json('[{"label": "a", "x1": 1, "y1": 2, "x2": 30, "y2": 40}]',
                           (64, 48))[0].x2 == 30
    for bad, why in (("{", "not valid JSON"), ('{"a": 1}', "JSON list"),
                     ('[{"label": "a", "x1": "left"}]', "box 1: needs"),
                     ('[{"x1": 90, "y1": 90, "x2": 99, "y2": 99}]', "no area")):
        with pytest.raises(ValueError, match=why):
            boxes_from_json(bad, (64, 48))


def test_boxes_are_drawn_and_reach_the_yolo_dataset(studio, tmp_path):
    from tabs.yolo.service import get_service

    pic = tmp_path / "shapes.webp"
    Image.new("RGB", (640, 420), (235, 240, 245)).save(pic, lossless=True)
    boxes = parse_boxes(QWEN25, (640, 420))
    drawn = draw_boxes(Image.open(pic), boxes)
    assert drawn.getpixel((100, 150)) != (235, 240, 245)  # the left edge of box 1 is drawn
    assert drawn.getpixel((200, 150)) == (235, 240, 245)  # its inside is not painted over

    payload = service.json_boxes(boxes)
    msg = service.to_yolo(studio, "prelabels", str(pic), payload)
    assert "2 pre-labels" in msg and "prelabels" in msg
    ds = get_service(studio).dataset("prelabels")
    assert ds.classes == ["red circle", "blue square"]
    [name] = ds.images()
    assert name == "shapes.png"  # the checked RGB copy the boxes refer to
    saved = ds.boxes(name)
    assert [(b.cls, round(b.x1), round(b.y1), round(b.x2), round(b.y2)) for b in saved] == [
        (0, 100, 50, 300, 250), (1, 400, 50, 500, 150)]
    # a second picture reuses the classes and appends a new one
    edited = json.loads(payload)[:1] + [{"label": "triangle", "x1": 5, "y1": 5, "x2": 60,
                                         "y2": 70}]
    service.to_yolo(studio, "prelabels", str(pic), json.dumps(edited))
    assert ds.classes == ["red circle", "blue square", "triangle"]
    assert ds.counts() == (2, 2)
    with pytest.raises(ValueError, match="no boxes to send"):
        service.to_yolo(studio, "prelabels", str(pic), "[]")
    with pytest.raises(ValueError, match="dataset name"):
        service.to_yolo(studio, "../evil", str(pic), payload)


def test_history_pictures_outside_the_allowed_folders_are_ignored(studio, tmp_path):
    inside = studio.settings.home / "a.png"
    inside.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(inside)
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    history = [{"role": "user", "content": [{"type": "file", "file": {"path": str(outside)}},
                                            {"type": "file", "file": {"path": str(inside)}},
                                            {"type": "text", "text": "what is it?"}]},
               {"role": "assistant", "content": [{"type": "text", "text": "a square"}]}]
    msgs = service.history_to_messages("", history, service.allowed_roots(studio))
    images = [p["image"] for p in msgs[0]["content"] if p["type"] == "image"]
    assert images == [str(inside.resolve())]
    assert msgs[1] == {"role": "assistant", "content": "a square"}
