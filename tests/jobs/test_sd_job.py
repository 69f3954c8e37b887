"""SD LoRA training as a real job (child process): cancel keeps the LoRA so far, resume finishes
it, and the finished LoRA is listed for the Generate tab at once."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def test_sd_job_cancel_resume_and_library(studio, tmp_path):
    from tabs.sd import service
    from tabs.sd.config import SDTrainConfig
    from tabs.sd.dataset import prepare_dataset
    from tabs.sd.tiny import make_tiny_sd15

    base = make_tiny_sd15(tmp_path / "base")
    files = []
    for i in range(2):
        arr = np.full((40, 40, 3), 60 * (i + 1), np.uint8)
        Image.fromarray(arr).save(tmp_path / f"i{i}.png")
        files.append(tmp_path / f"i{i}.png")
    ds = prepare_dataset(files, studio.settings.uploads_dir / "sd" / "ds", size=32,
                         instance_prompt="sks", min_side=16)
    cfg = SDTrainConfig(base_model=str(base), dataset_dir=str(ds.folder), output_name="jobtoy",
                        resolution=32, rank=4, max_steps=400, checkpoint_every=0,
                        sample_every=0, learning_rate=1e-3)
    run_id = service.submit_training(studio, cfg)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        v = studio.jobs.view(run_id)
        if v.status == "running" and v.done >= 2:
            break
        assert v.status in ("queued", "running"), v.error or v.log_tail
        time.sleep(0.2)
    studio.jobs.cancel(run_id)
    v = studio.jobs.wait(run_id, timeout=60)
    assert v.status == "cancelled" and v.resumable
    labels = " ".join(a["label"] for a in v.artifacts)
    assert "stopped early" in labels  # the LoRA so far was saved
    stopped_at = int(v.done)
    assert 2 <= stopped_at < 400

    # resume with fewer remaining steps: the job reads its own config, so shorten it on disk
    import json

    cfg_path = studio.jobs.run_dir(run_id) / "config.json"
    saved_cfg = json.loads(cfg_path.read_text())
    saved_cfg["max_steps"] = stopped_at + 2
    cfg_path.write_text(json.dumps(saved_cfg))
    studio.jobs.resume(run_id)
    v = studio.jobs.wait(run_id, timeout=120)
    assert v.status == "succeeded", v.error or v.log_tail
    assert f"resumed from step-{stopped_at:06d}" in (studio.jobs.run_dir(run_id) /
                                                  "log.txt").read_text()
    assert v.metrics[-1]["step"] == stopped_at + 2
    listed = [path for _, path in service.list_loras(studio)]
    assert any(p.endswith("jobtoy.safetensors") for p in listed)


def test_epochs_are_turned_into_steps_when_the_job_is_queued(studio, tmp_path):
    import json

    from tabs.sd import service
    from tabs.sd.config import SDTrainConfig
    from tabs.sd.dataset import prepare_dataset
    from tabs.sd.tiny import make_tiny_sd15

    base = make_tiny_sd15(tmp_path / "base")
    files = []
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 50 * (i + 1), np.uint8)).save(tmp_path / f"e{i}.png")
        files.append(tmp_path / f"e{i}.png")
    ds = prepare_dataset(files, studio.settings.uploads_dir / "sd" / "ds", size=32,
                         instance_prompt="sks", min_side=16)
    cfg = SDTrainConfig(base_model=str(base), dataset_dir=str(ds.folder), output_name="ep",
                        resolution=32, rank=4, epochs=4, batch_size=2, max_steps=999,
                        checkpoint_every=0, sample_every=0)
    run_id = service.submit_training(studio, cfg)
    saved = json.loads((studio.jobs.run_dir(run_id) / "config.json").read_text())
    assert (saved["epochs"], saved["max_steps"]) == (4, 6)  # 3 images x 4 epochs / batch 2
    assert "4 epochs = 6 steps" in studio.jobs.view(run_id).title
    v = studio.jobs.wait(run_id, timeout=120)
    assert v.status == "succeeded", v.error or v.log_tail
    assert v.metrics[-1]["step"] == 6
