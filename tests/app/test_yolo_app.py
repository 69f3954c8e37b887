"""The YOLO tab through gradio_client: labels made over the API survive a studio restart."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import launch_studio, stop_studio

pytestmark = pytest.mark.slow


@contextmanager
def _client(home):
    """The YOLO tab launched on `home` for the block: (studio, app, gradio_client Client)."""
    from gradio_client import Client

    s, app, url = launch_studio(home, tab_modules=["tabs.yolo"])
    try:
        yield s, app, Client(url, verbose=False)
    finally:
        stop_studio(s, app)


ME = "5e" * 16  # a browser secret of the script's own: the same owner after a restart


def test_labels_made_over_the_api_survive_a_restart(tmp_path):
    """A script that sends a secret (the last argument) is the same owner across restarts
    (one without is its session's owner: a new Client, a new owner)."""
    from gradio_client import handle_file

    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        p = tmp_path / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(p)
        files.append(p)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    home = tmp_path / "home"

    with _client(home) as (s, app, c):
        c.predict("parts", "bolt, nut", secret=ME, api_name="/yolo_create_dataset")
        report = c.predict("parts", [handle_file(str(f)) for f in files] +
                           [handle_file(str(tmp_path / "broken.jpg"))], False,
                           secret=ME, api_name="/yolo_add_files")[0]
        assert "Added 3 image(s)" in report and "broken.jpg" in report and "corrupt" in report
        listing = c.predict("parts", False, secret=ME, api_name="/yolo_images")
        assert listing["total"] == 3 and listing["labelled"] == 0
        assert listing["classes"] == ["bolt", "nut"]
        boxes = [{"xmin": 4, "ymin": 5, "xmax": 30, "ymax": 40, "label": "nut"},
                 {"xmin": 35, "ymin": 2, "xmax": 60, "ymax": 20, "cls": 0}]
        saved = c.predict("parts", "photo1.png", json.dumps(boxes), secret=ME,
                          api_name="/yolo_set_boxes")
        assert saved["saved"] == 2
        c.predict("parts", "photo2.png", "[]", secret=ME, api_name="/yolo_set_boxes")  # background
        with pytest.raises(Exception, match="out of range"):
            c.predict("parts", "photo0.png", json.dumps([{"xmin": 1, "ymin": 1, "xmax": 9,
                                                         "ymax": 9, "cls": 7}]),
                      secret=ME, api_name="/yolo_set_boxes")

    with _client(home) as (s, app, c):  # a fresh studio on the same home folder
        listing = c.predict("parts", False, secret=ME, api_name="/yolo_images")
        assert listing["labelled"] == 2 and listing["total"] == 3
        todo = c.predict("parts", True, secret=ME, api_name="/yolo_images")
        assert todo["images"] == ["photo0.png"]
        got = c.predict("parts", "photo1.png", secret=ME, api_name="/yolo_get_boxes")
        assert got["labelled"] is True
        assert [(b["label"], b["xmin"], b["ymin"], b["xmax"], b["ymax"]) for b in got["boxes"]] \
            == [("nut", 4, 5, 30, 40), ("bolt", 35, 2, 60, 20)]
        assert c.predict("parts", "photo2.png", secret=ME,
                         api_name="/yolo_get_boxes")["boxes"] == []


# ----- issue 24: labels never change behind the user's back ------------------------------------
def _labelled_parts(c, tmp_path, classes="bolt, nut"):
    from gradio_client import handle_file

    p = tmp_path / "photo0.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
                    ).save(p)
    c.predict("parts", classes, api_name="/yolo_create_dataset")
    c.predict("parts", [handle_file(str(p))], False, api_name="/yolo_add_files")
    boxes = [{"xmin": 2, "ymin": 3, "xmax": 20, "ymax": 20, "cls": 0},
             {"xmin": 25, "ymin": 5, "xmax": 40, "ymax": 30, "cls": 1},
             {"xmin": 42, "ymin": 20, "xmax": 62, "ymax": 46, "cls": 0}]
    c.predict("parts", "photo0.png", json.dumps(boxes), api_name="/yolo_set_boxes")


def _dataset_dir(s, c, name):
    """Where the client's own dataset lives (each owner has its own store)."""
    from tabs.yolo.service import get_service
    from tests.app.owners import client_owner

    return get_service(s).store_of(client_owner(c)).root / name


def _untrained_pt(home):
    """A real YOLOv8n checkpoint with random weights, inside the studio's runs folder."""
    from ultralytics import YOLO

    path = home / "runs" / "fake" / "best.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    # an ownerless run (made outside the pages): its weights are everyone's to use
    (path.parent / "run.json").write_text(json.dumps({"id": "fake", "kind": "yolo",
                                                      "status": "succeeded", "created": 0}))
    YOLO("yolov8n.yaml").save(str(path))
    return path


def _value(x):
    """An output's value (a component update sends a dict around it)."""
    return x.get("value") if isinstance(x, dict) and x.get("__type__") == "update" else x


def _texts(out):
    """The text outputs of a call (plain strings, or the value of an update)."""
    items = map(_value, out if isinstance(out, (list, tuple)) else [out])
    return " ".join(x for x in items if isinstance(x, str))


def test_prelabel_shows_proposals_and_never_changes_the_label_file(tmp_path, monkeypatch):
    from tabs.yolo import ui
    from tabs.yolo.formats import Box

    home = tmp_path / "home"
    with _client(home) as (s, app, c):
        _labelled_parts(c, tmp_path)
        label = _dataset_dir(s, c, "parts") / "labels" / "photo0.txt"
        before = label.read_bytes()
        model = _untrained_pt(home)

        # No model picked: a warning, no error, nothing changes.
        c.predict("parts", "photo0.png", None, 0.25, api_name="/yolo_prelabel")
        assert label.read_bytes() == before

        # A model that proposes nothing: the three boxes stay, and the message says so.
        out = c.predict("parts", "photo0.png", str(model), 0.95, api_name="/yolo_prelabel")
        assert label.read_bytes() == before
        assert "unchanged" in _texts(out) and "3 box" in _texts(out)

        # A model that proposes one box on top of an existing one and one new box: both the
        # user's boxes and the new proposal are on the canvas, nothing is saved yet.
        monkeypatch.setattr(ui, "prelabel", lambda *a, **k: [Box(0, 2, 3, 20, 20),
                                                             Box(1, 5, 30, 20, 45)])
        out = c.predict("parts", "photo0.png", str(model), 0.25, api_name="/yolo_prelabel")
        canvas = _value(out[0])
        assert len(canvas["boxes"]) == 4 and "1 proposed box" in _texts(out)
        assert label.read_bytes() == before
        c.predict("parts", "photo0.png", api_name="/yolo_discard_proposals")
        assert label.read_bytes() == before
        got = c.predict("parts", "photo0.png", api_name="/yolo_get_boxes")
        assert len(got["boxes"]) == 3


def test_class_rename_and_reorder_keep_every_box_class_and_the_canvas_follows(tmp_path):
    home = tmp_path / "home"
    with _client(home) as (s, app, c):
        _labelled_parts(c, tmp_path, classes="person, car")
        label = _dataset_dir(s, c, "parts") / "labels" / "photo0.txt"
        before = label.read_text()
        named = lambda: [b["label"] for b in c.predict(  # noqa: E731
            "parts", "photo0.png", api_name="/yolo_get_boxes")["boxes"]]
        assert named() == ["person", "car", "person"]

        # Rename person -> human: indices stay, the file is untouched, the canvas shows it.
        out = c.predict("parts", "human\ncar", "photo0.png", None, api_name="/yolo_set_classes")
        msg, _text, _picker, _legend, canvas = map(_value, out)
        assert "human" in msg and label.read_text() == before
        assert [b["label"] for b in canvas["boxes"]] == ["human", "car", "human"]
        assert named() == ["human", "car", "human"]

        # Reorder: the label file is rewritten so every box keeps its class.
        out = c.predict("parts", "car\nhuman", "photo0.png", None, api_name="/yolo_set_classes")
        assert [b["label"] for b in _value(out[-1])["boxes"]] == ["human", "car", "human"]
        assert named() == ["human", "car", "human"]
        rows = [line.split()[0] for line in label.read_text().splitlines()]
        assert rows == ["1", "0", "1"]
        assert [line.split()[1:] for line in label.read_text().splitlines()] == \
            [line.split()[1:] for line in before.splitlines()]

        # Removing a class still in use is refused; nothing changes.
        now = label.read_text()
        with pytest.raises(Exception, match="still used"):
            c.predict("parts", "car", "photo0.png", None, api_name="/yolo_set_classes")
        assert label.read_text() == now and named() == ["human", "car", "human"]


def test_detect_takes_an_uploaded_image_and_is_not_a_stream(tmp_path):
    from gradio_client import handle_file

    home = tmp_path / "home"
    with _client(home) as (s, app, c):
        comps = [b for b in app.config["components"]
                 if b.get("props", {}).get("elem_id") == "yolo-detect-input"]
        assert len(comps) == 1 and not comps[0]["props"].get("streaming")
        assert set(comps[0]["props"]["sources"]) == {"upload", "clipboard", "webcam"}
        model = _untrained_pt(home)
        p = tmp_path / "street.png"
        Image.fromarray(np.full((64, 80, 3), 120, np.uint8)).save(p)
        annotated, rows = c.predict(handle_file(str(p)), str(model), None, False, 0.25, 0.7,
                                    api_name="/yolo_detect")
        assert annotated and Image.open(annotated).size == (80, 64)


def test_starter_dataset_offline_with_the_recipe_and_what_to_expect(tmp_path):
    from tabs.yolo.service import STARTER_NAME

    with _client(tmp_path / "home") as (s, app, c):
        out = c.predict(api_name="/yolo_starter_dataset")
        assert STARTER_NAME in _texts(out) and "mAP50" in _texts(out)
        listing = c.predict(STARTER_NAME, False, api_name="/yolo_images")
        assert listing["total"] == 144 and listing["labelled"] == 144
        assert listing["classes"] == ["circle", "square"]
        again = c.predict(api_name="/yolo_starter_dataset")  # made once, then reused
        assert STARTER_NAME in _texts(again)


def test_trained_weights_and_onnx_download_in_the_browser_client(tmp_path):
    """Issue 19: YOLO weights and the ONNX export come to the browser as files (gradio_client
    downloads them like a browser does), not only as a server path."""
    from tabs.yolo.service import get_service
    from tabs.yolo.synthetic import write_yolo_dataset

    with _client(tmp_path / "home") as (s, app, c):
        ds = get_service(s).store.create("shapes")
        ds.import_yolo(write_yolo_dataset(tmp_path / "src", n_train=8, n_val=4, size=64))
        picker = c.predict("shapes", "yolov8n.yaml", 1, 64, 4, 20, 0, False, 0.0, 0.5, True,
                           False, api_name="/yolo_train")
        run_id = _value(picker)
        v = s.jobs.wait(run_id, timeout=400)
        assert v.status == "succeeded", v.error + v.log_tail
        _table, _notes, files = c.predict(run_id, api_name="/yolo_export")
        got = {Path(f).suffix: Path(f) for f in files}
        assert {".pt", ".onnx"} <= set(got)
        assert all(f.stat().st_size > 1_000_000 for f in got.values())
        assert not str(got[".onnx"]).startswith(str(tmp_path / "home"))  # a download copy
