"""A YOLO cancel with the default DataLoader workers and plots on: the worker alone gets SIGTERM,
Ultralytics finishes its batch, validates, saves and plots within the grace period that counts
from its acknowledgement, and the run is cancelled, not killed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tabs.yolo.config import TrainConfig
from tabs.yolo.service import get_service
from tests.jobs.test_yolo_train import _dataset

pytestmark = pytest.mark.slow


def test_cancel_with_two_dataloader_workers_and_plots_ends_cancelled_not_killed(studio,
                                                                              tmp_path):
    studio.jobs.grace_seconds = 5.0  # short, so that only the acknowledgement's grace can save it
    svc = get_service(studio)
    _dataset(svc, tmp_path, "tiny", n_train=16, n_val=4, size=64, n_classes=1, seed=3)
    cfg = TrainConfig(model="yolov8n.yaml", epochs=8, imgsz=64, batch=4, workers=2,
                      close_mosaic=0, plots=True, offline=True)
    run_id = svc.start_training("tiny", cfg)
    deadline = time.monotonic() + 180
    while not studio.jobs.view(run_id).metrics:
        assert time.monotonic() < deadline, studio.jobs.view(run_id).log_tail
        assert studio.jobs.view(run_id).status in ("queued", "running")
        time.sleep(0.2)
    studio.jobs.cancel(run_id)
    v = studio.jobs.wait(run_id, timeout=240)
    assert v.status == "cancelled" and "killed" not in v.note, (v.note, v.error, v.log_tail)
    assert (Path(v.run_dir) / "train" / "weights" / "last.pt").exists()
