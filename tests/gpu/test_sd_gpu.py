"""On the GPU machine: the SD LoRA tab's real training job and generation run on CUDA
(fp16 mixed precision, 8-bit Adam when bitsandbytes is there, through the job manager and the
model manager), on a tiny SD 1.5-shaped model built from configs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_sd_lora_job_and_generation_on_cuda(tmp_path):
    from studio.config import Settings
    from studio.context import build_studio
    from tabs.sd import service
    from tabs.sd.config import SDTrainConfig
    from tabs.sd.dataset import prepare_dataset
    from tabs.sd.generate import GenerateRequest, LoraChoice, generate
    from tabs.sd.tiny import make_tiny_sd15

    studio = build_studio(Settings(home=tmp_path / "home", profile="small",
                                   vram_budget=12 * 1024**3))
    try:
        assert studio.device == "cuda"
        base = make_tiny_sd15(tmp_path / "base")
        files = []
        for i in range(4):
            arr = (np.random.default_rng(i).random((96, 96, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / f"i{i}.png")
            files.append(tmp_path / f"i{i}.png")
        ds = prepare_dataset(files, tmp_path / "ds", size=64, instance_prompt="sks toy",
                             min_side=32)
        cfg = SDTrainConfig(base_model=str(base), dataset_dir=str(ds.folder),
                            output_name="cudatoy", resolution=64, rank=4, max_steps=30,
                            checkpoint_every=0, sample_every=15, sample_steps=4,
                            sample_prompts=["sks toy"], learning_rate=1e-3,
                            mixed_precision="fp16")
        run_id = service.submit_training(studio, cfg)
        v = studio.jobs.wait(run_id, timeout=240)
        log = (studio.jobs.run_dir(run_id) / "log.txt").read_text()
        print(log[-3000:])
        assert v.status == "succeeded", v.error or v.log_tail
        assert "cuda" in log.lower()
        assert [m["step"] for m in v.metrics if "train_loss" in m][-1] == 30
        assert any(a["kind"] == "image" for a in v.artifacts)  # samples drawn on the GPU
        lora = [p for _, p in service.list_loras(studio) if p.endswith("cudatoy.safetensors")]
        assert lora
        outs = []
        for strength in (0.0, 1.0):
            req = GenerateRequest(base=str(base), arch="sd15", prompt="sks toy", steps=4,
                                  seed=7, width=64, height=64,
                                  loras=[LoraChoice(lora[0], strength)])
            res = generate(studio, req, tmp_path / "out")
            outs.append(np.asarray(Image.open(res.images[0].path), dtype=np.float32))
        assert np.abs(outs[0] - outs[1]).mean() > 0.5  # the trained LoRA changes the image
        assert studio.models.used() <= studio.models.budget
    finally:
        studio.close()
