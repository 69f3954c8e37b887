"""YOLO labelling store: round trips between formats, export that Ultralytics accepts, bad input."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tabs.yolo.dataset import DatasetStore
from tabs.yolo.formats import Box, LabelError, parse_coco, parse_yolo, to_coco, to_yolo
from tabs.yolo.synthetic import write_yolo_dataset


def _img(path: Path, w: int = 80, h: int = 60) -> Path:
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _close(a: list[Box], b: list[Box], tol: float = 0.05) -> bool:
    return len(a) == len(b) and all(
        x.cls == y.cls and max(abs(x.x1 - y.x1), abs(x.y1 - y.y1), abs(x.x2 - y.x2),
                               abs(x.y2 - y.y2)) <= tol for x, y in zip(a, b, strict=False))


@pytest.fixture
def ds(tmp_path):
    store = DatasetStore(tmp_path / "datasets")
    d = store.create("cats", classes=["cat", "dog"])
    for i in range(4):
        d.add_image(_img(tmp_path / f"im{i}.png"))
    return d


def test_yolo_coco_internal_round_trip(ds):
    boxes = [Box(0, 10.0, 5.0, 40.0, 30.0), Box(1, 50.5, 20.25, 79.0, 59.0)]
    text = to_yolo(boxes, 80, 60)
    assert _close(parse_yolo(text, 2, 80, 60), boxes)
    ds.set_boxes("im0.png", boxes)
    coco = ds.to_coco()
    names, images, problems = parse_coco(json.loads(json.dumps(coco)))
    assert names == ["cat", "dog"] and not problems
    assert images[0].file_name == "im0.png" and _close(images[0].boxes, boxes)
    assert to_coco(names, images) == coco


def test_every_edit_is_saved_at_once_and_survives_reopen(ds, tmp_path):
    assert ds.counts() == (0, 4)
    ds.set_boxes("im1.png", [Box(1, 1, 2, 30, 40)])
    ds.set_boxes("im2.png", [])  # labelled as background
    again = DatasetStore(tmp_path / "datasets").get("cats")  # a fresh process would do this
    assert again.counts() == (2, 4)
    assert again.images(only_unlabelled=True) == ["im0.png", "im3.png"]
    assert again.boxes("im2.png") == [] and again.boxes("im0.png") is None
    assert _close(again.boxes("im1.png"), [Box(1, 1, 2, 30, 40)])
    with pytest.raises(ValueError, match="out of range"):
        again.set_boxes("im1.png", [Box(5, 1, 2, 30, 40)])
    with pytest.raises(ValueError, match="still used"):
        again.set_classes(["cat"])


def test_export_zip_is_accepted_by_ultralytics(ds, tmp_path):
    from ultralytics.data.utils import check_det_dataset

    for i, name in enumerate(ds.images()):
        ds.set_boxes(name, [Box(i % 2, 5, 5, 30 + i, 40)])
    assert ds.split(0.25) == {"train": 3, "val": 1}
    zpath = ds.export_zip(tmp_path / "out.zip")
    with zipfile.ZipFile(zpath) as zf:
        zf.extractall(tmp_path / "unz")
    info = check_det_dataset(str(tmp_path / "unz" / "data.yaml"), autodownload=False)
    assert info["nc"] == 2 and list(info["names"].values()) == ["cat", "dog"]
    assert len(list(Path(info["train"]).glob("*.png"))) == 3
    assert len(list(Path(info["val"]).glob("*.png"))) == 1


def test_import_yolo_zip_and_coco(tmp_path):
    src = tmp_path / "src"
    write_yolo_dataset(src, n_train=3, n_val=2, size=64, seed=1)
    zpath = tmp_path / "ds.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in src.rglob("*"):
            if f.is_file():
                zf.write(f, f.relative_to(src).as_posix())
    store = DatasetStore(tmp_path / "datasets")
    ds = store.create("imp")
    rep = ds.add_files([zpath], tmp_path)
    assert not rep.problems and len(rep.added) == 5 and len(rep.labelled) == 5
    assert ds.classes == ["circle", "square"] and ds.counts() == (5, 5)
    assert sum(ds.split_of(n) == "val" for n in ds.images()) == 2
    original = parse_yolo((src / "labels/val/val_0000.txt").read_text(), 2, 64, 64)
    assert _close(ds.boxes("val_0000.png"), original, tol=0.01)
    # COCO out of this dataset, into a second one: same boxes.
    czip = tmp_path / "coco.zip"
    with zipfile.ZipFile(czip, "w") as zf:
        zf.writestr("annotations.json", json.dumps(ds.to_coco()))
        for n in ds.images():
            zf.write(ds.image_path(n), f"images/{n}")
    ds2 = store.create("fromcoco")
    rep2 = ds2.add_files([czip], tmp_path)
    assert not rep2.problems and ds2.counts() == (5, 5)
    for n in ds.images():
        assert _close(ds2.boxes(n), ds.boxes(n), tol=0.01)


def test_bad_input_is_reported_per_file_and_skipped(ds, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.png").write_bytes(b"not a png at all")
    good = _img(tmp_path / "good.png")
    trunc = tmp_path / "trunc.jpg"
    Image.open(good).convert("RGB").save(trunc, quality=90)
    trunc.write_bytes(trunc.read_bytes()[:200])
    rep = ds.add_files([tmp_path / "notes.txt", tmp_path / "fake.png", trunc, good], tmp_path)
    assert rep.added == ["good.png"]
    assert len(rep.problems) == 3
    assert any("notes.txt" in p and "not an image type" in p for p in rep.problems)
    assert any("fake.png" in p and "corrupt" in p for p in rep.problems)
    assert any("trunc.jpg" in p and "corrupt" in p for p in rep.problems)


def test_zip_slip_and_bad_labels_are_skipped(tmp_path):
    src = tmp_path / "src"
    write_yolo_dataset(src, n_train=2, n_val=1, size=64, seed=2)
    (src / "labels/train/train_0001.txt").write_text("7 0.5 0.5 0.2 0.2\n")  # class out of range
    (src / "labels/val/val_0000.txt").write_text("0 0.95 0.5 0.2 0.2\n")  # past the edge
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in src.rglob("*"):
            if f.is_file():
                zf.write(f, f.relative_to(src).as_posix())
        zf.writestr("../../escaped.txt", "gotcha")
        zf.writestr("/abs/escaped2.txt", "gotcha")
    ds = DatasetStore(tmp_path / "datasets").create("evil")
    rep = ds.add_files([zpath], tmp_path / "datasets")
    assert not (tmp_path / "escaped.txt").exists() and not Path("/abs/escaped2.txt").exists()
    assert sum("escapes the upload folder" in p for p in rep.problems) == 2
    assert any("train_0001.txt" in p and "class 7 out of range" in p for p in rep.problems)
    assert any("val_0000.txt" in p and "outside the image" in p for p in rep.problems)
    assert ds.counts() == (1, 3)  # the images stay, unlabelled, so the user can fix them


def test_parsers_name_the_bad_line():
    with pytest.raises(LabelError, match="line 2"):
        parse_yolo("0 0.5 0.5 0.1 0.1\n0 0.5 0.5\n", 1, 10, 10)
    names, images, problems = parse_coco({
        "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
        "categories": [{"id": 3, "name": "x"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [0, 0, 2, 2]},
                        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 2]},
                        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2]}]})
    assert names == ["x"] and len(images[0].boxes) == 1 and len(problems) == 2
