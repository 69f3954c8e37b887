"""The YOLO tab through gradio_client: labels made over the API survive a studio restart."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import launch_studio, stop_studio

pytestmark = pytest.mark.slow


def _client(home):
    from gradio_client import Client

    s, app, url = launch_studio(home, tab_modules=["tabs.yolo"])
    return s, app, Client(url, verbose=False)


def test_labels_made_over_the_api_survive_a_restart(tmp_path):
    from gradio_client import handle_file

    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        p = tmp_path / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(p)
        files.append(p)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    home = tmp_path / "home"

    s, app, c = _client(home)
    try:
        c.predict("parts", "bolt, nut", api_name="/yolo_create_dataset")
        report = c.predict("parts", [handle_file(str(f)) for f in files] +
                           [handle_file(str(tmp_path / "broken.jpg"))], False,
                           api_name="/yolo_add_files")[0]
        assert "Added 3 image(s)" in report and "broken.jpg" in report and "corrupt" in report
        listing = c.predict("parts", False, api_name="/yolo_images")
        assert listing["total"] == 3 and listing["labelled"] == 0
        assert listing["classes"] == ["bolt", "nut"]
        boxes = [{"xmin": 4, "ymin": 5, "xmax": 30, "ymax": 40, "label": "nut"},
                 {"xmin": 35, "ymin": 2, "xmax": 60, "ymax": 20, "cls": 0}]
        saved = c.predict("parts", "photo1.png", json.dumps(boxes), api_name="/yolo_set_boxes")
        assert saved["saved"] == 2
        c.predict("parts", "photo2.png", "[]", api_name="/yolo_set_boxes")  # background
        with pytest.raises(Exception, match="out of range"):
            c.predict("parts", "photo0.png", json.dumps([{"xmin": 1, "ymin": 1, "xmax": 9,
                                                         "ymax": 9, "cls": 7}]),
                      api_name="/yolo_set_boxes")
    finally:
        stop_studio(s, app)

    s, app, c = _client(home)  # a fresh studio on the same home folder
    try:
        listing = c.predict("parts", False, api_name="/yolo_images")
        assert listing["labelled"] == 2 and listing["total"] == 3
        todo = c.predict("parts", True, api_name="/yolo_images")
        assert todo["images"] == ["photo0.png"]
        got = c.predict("parts", "photo1.png", api_name="/yolo_get_boxes")
        assert got["labelled"] is True
        assert [(b["label"], b["xmin"], b["ymin"], b["xmax"], b["ymax"]) for b in got["boxes"]] \
            == [("nut", 4, 5, 30, 40), ("bolt", 35, 2, 60, 20)]
        assert c.predict("parts", "photo2.png", api_name="/yolo_get_boxes")["boxes"] == []
    finally:
        stop_studio(s, app)
