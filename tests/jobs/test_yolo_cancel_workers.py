"""A YOLO cancel with the default DataLoader workers and plots on: the worker alone gets SIGTERM,
Ultralytics finishes its batch, validates, saves and plots within the grace period that counts
from its acknowledgement, and the run is cancelled, not killed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tabs.yolo.config import TrainConfig
from tests.jobs.test_yolo_train import _cancelled_after_an_epoch

pytestmark = pytest.mark.slow


def test_cancel_with_two_dataloader_workers_and_plots_ends_cancelled_not_killed(studio,
                                                                              tmp_path):
    studio.jobs.grace_seconds = 5.0  # short, so that only the acknowledgement's grace can save it
    cfg = TrainConfig(model="yolov8n.yaml", epochs=8, imgsz=64, batch=4, workers=2,
                      close_mosaic=0, plots=True, offline=True)
    _, v = _cancelled_after_an_epoch(studio, tmp_path, cfg, first_s=180, cancel_s=240)
    assert v.status == "cancelled" and "killed" not in v.note, (v.note, v.error, v.log_tail)
    assert (Path(v.run_dir) / "train" / "weights" / "last.pt").exists()
