"""The YOLO job function in-process (no network, events, plots) and detection on its output."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from studio.reporting import Reporter, read_events
from tabs.yolo import train
from tabs.yolo.detect import (
    UnsafeModelFile,
    check_model_file,
    detect_image,
    detect_video,
    load_model,
    prelabel,
)
from tabs.yolo.synthetic import draw_sample, write_yolo_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of training with plots on, while every network call is refused and recorded."""
    tmp = tmp_path_factory.mktemp("yolo")
    data = write_yolo_dataset(tmp / "ds", n_train=8, n_val=4, size=64, n_classes=2)
    attempts = []

    def refuse(*a, **k):
        attempts.append(a[:2])
        raise OSError("network disabled in this test")

    mp = pytest.MonkeyPatch()
    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket, "getaddrinfo", refuse)
    mp.setattr(socket, "create_connection", refuse)
    run_dir = tmp / "home" / "runs" / "r1"
    report = Reporter(run_dir)
    try:
        train.run({"data": str(data), "epochs": 1, "imgsz": 64, "batch": 4, "workers": 0,
                   "close_mosaic": 0, "plots": True, "offline": True}, report)
    finally:
        mp.undo()
        report.close()
    return run_dir, attempts


def test_job_reports_epoch_metrics_plots_and_makes_no_network_call(trained):
    run_dir, attempts = trained
    assert attempts == []
    events = read_events(run_dir)
    metrics = [e for e in events if e["type"] == "metrics"]
    assert len(metrics) == 1
    for key in ("box_loss", "cls_loss", "mAP50", "mAP50_95", "train_loss"):
        assert key in metrics[0]
    labels = {e["label"] for e in events if e["type"] == "artifact"}
    assert {"best.pt", "last.pt", "PR curve", "Confusion matrix at confidence 0.25"} <= labels
    assert "Confusion matrix" not in labels  # Ultralytics' own, counted down to conf 0.001
    assert any(e["type"] == "checkpoint" for e in events)


def test_confusion_matrix_counts_detections_at_a_usable_confidence(trained):
    """Issue 19: the matrix counted every detection down to 0.001 (background cells in the
    thousands). Ours is a separate pass at 0.25: a one-epoch model finds almost nothing there,
    so the background row holds at most a few boxes per val image."""
    import json

    run_dir, _ = trained
    cm = json.loads((run_dir / "train" / "confusion" / "confusion.json").read_text())
    assert cm["conf"] == 0.25 and cm["names"] == ["circle", "square"]
    matrix = np.array(cm["matrix"])
    assert matrix.shape == (3, 3)  # 2 classes + background
    false_positives = matrix[-1, :].sum()  # predicted as something, nothing there
    assert false_positives <= 4 * 3  # 4 val images, at most 3 boxes each
    summary = json.loads((run_dir / "results.json").read_text())
    assert summary["confusion"]["conf"] == 0.25


def test_every_format_is_evaluated_with_the_same_letterbox(tmp_path):
    """Issue 19: the .pt was scored on rectangular val batches and a fixed-shape ONNX on
    square ones, so the table's mAP difference came from padding. One set of arguments now."""
    from types import SimpleNamespace

    from tabs.yolo.export import evaluate

    calls = []

    class Fake:
        def val(self, **kw):
            calls.append(kw)
            return SimpleNamespace(box=SimpleNamespace(map50=0.5, map=0.3))

    for fmt in ("pytorch", "onnx"):
        assert evaluate(Fake(), tmp_path / "data.yaml", 96, "cpu", tmp_path / fmt) == (0.5, 0.3)
    a, b = calls
    assert a["rect"] is False and a["imgsz"] == 96 and a["batch"] == 1
    assert {k: v for k, v in a.items() if k != "project"} == \
        {k: v for k, v in b.items() if k != "project"}


def test_a_real_checkpoint_loads_restricted_and_a_trapped_pickle_only_when_trusted(tmp_path,
                                                                                  trained):
    from tests.canary import write_canary_pickle

    run_dir, _ = trained
    upload = tmp_path / "model.pt"
    upload.write_bytes((run_dir / "train/weights/best.pt").read_bytes())
    # A plain YOLO checkpoint passes Ultralytics' weights_only loader: no tick needed.
    assert check_model_file(upload, trusted=False) == upload
    canary = tmp_path / "CANARY"
    for torch_zip in (False, True):
        evil = write_canary_pickle(tmp_path / f"yolov8n-{torch_zip}.pt", canary, torch_zip)
        with pytest.raises(UnsafeModelFile, match="pickle"):
            check_model_file(evil, trusted=False)
        with pytest.raises(UnsafeModelFile):
            train.run({"data": "x", "model": str(evil), "offline": True},
                      Reporter(tmp_path / "runs" / f"evil-{torch_zip}"))
    assert not canary.exists()
    with pytest.raises(ValueError, match="not a YOLO model file"):
        check_model_file(tmp_path / "x.txt", trusted=True)


def test_detect_image_video_and_prelabel(tmp_path, trained):
    import cv2

    run_dir, _ = trained
    model = load_model(run_dir / "train/weights/best.pt", "cpu")
    img, _ = draw_sample(np.random.default_rng(5), size=64)
    rgb = np.asarray(img)
    annotated, dets = detect_image(model, rgb, conf=0.0, iou=0.5, imgsz=64)
    assert annotated.shape == rgb.shape
    assert dets and all(0.0 <= d.confidence <= 1.0 for d in dets)  # conf 0 keeps all candidates
    _, few = detect_image(model, rgb, conf=0.99, iou=0.5, imgsz=64)
    assert len(few) <= len(dets)
    boxes = prelabel(model, rgb, ["circle", "square"], conf=0.0, iou=0.5, imgsz=64)
    assert all(b.cls in (0, 1) for b in boxes) and len(boxes) == len(dets)

    src = tmp_path / "in.mp4"
    w = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 64))
    for _ in range(4):
        w.write(rgb[..., ::-1].copy())
    w.release()
    out, n = detect_video(model, src, tmp_path / "out.mp4", imgsz=64)
    assert n == 4 and Path(out).stat().st_size > 0
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4


def test_resumable_copy_mid_run_in_background_and_at_once_at_the_end(tmp_path):
    """Every epoch leaves a resumable checkpoint (a crash loses at most the epoch running);
    mid-run the copy does not hold up training and is finished before the next save
    overwrites last.pt; the last one is made before Ultralytics strips the optimizer."""
    from types import SimpleNamespace

    report = Reporter(tmp_path / "run")
    hooks = train.ReportCallbacks(report)
    last = tmp_path / "last.pt"
    trainer = SimpleNamespace(last=str(last), epochs=3, epoch=0, stop=False)
    for epoch in range(3):
        trainer.epoch = epoch
        hooks.on_train_epoch_start(trainer)
        hooks.on_train_epoch_end(trainer)  # waits for the previous epoch's copy
        last.write_bytes(f"epoch {epoch + 1} with optimizer".encode() * 1000)
        hooks.on_model_save(trainer)
        if epoch < 2:
            assert hooks._copy is not None  # mid-run: in the background
            hooks._copy.join()
        else:
            assert hooks._copy is None  # the end: done before returning
        saved = report.last_checkpoint()
        assert saved is not None and saved[1] == epoch + 1
        assert saved[0].read_bytes() == last.read_bytes()
    report.close()
    steps = [e["step"] for e in read_events(tmp_path / "run") if e["type"] == "checkpoint"]
    assert steps == [1, 2, 3]


def test_an_onnx_detector_is_not_listed_at_0_bytes(tmp_path, trained):
    """Issue 24: ONNX Runtime keeps no torch tensors, so the ledger said 0 B for it."""
    from studio.config import Settings
    from studio.context import build_studio
    from tabs.yolo.export import export_onnx
    from tabs.yolo.service import get_service

    run_dir, _ = trained
    onnx = export_onnx(run_dir / "train/weights/best.pt", 64, tmp_path / "export")
    s = build_studio(Settings(home=tmp_path / "home", profile="small"))
    try:
        key = get_service(s).model_key(onnx, trust_pickle=True)
        with s.models.use(key):
            pass
        row = next(r for r in s.models.loaded() if r.key == key)
        # measured, or (nothing torch can see) the spec's estimate the ledger shows instead
        shown = row.size or getattr(row, "estimate", 0)
        assert shown >= onnx.stat().st_size > 1_000_000
    finally:
        s.close()
