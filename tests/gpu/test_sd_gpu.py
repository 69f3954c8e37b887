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


def test_single_file_base_with_buckets_trains_on_cuda(tmp_path):
    """An original-layout .safetensors base (fp16 load through from_single_file) and a
    mixed-aspect dataset in buckets, with prior preservation (square class images in their own
    UNet call): the job finishes on CUDA with finite losses."""
    from studio.config import Settings
    from studio.context import build_studio
    from tabs.sd import service
    from tabs.sd.config import SDTrainConfig
    from tabs.sd.dataset import prepare_dataset
    from tabs.sd.tiny import make_tiny_sd15, save_original_single_file

    studio = build_studio(Settings(home=tmp_path / "home", profile="small",
                                   vram_budget=12 * 1024**3))
    try:
        folder = make_tiny_sd15(tmp_path / "base")
        file = save_original_single_file(folder, tmp_path / "civitai" / "tiny.safetensors")
        files = []
        for i, (w, h) in enumerate([(120, 72), (120, 72), (72, 120), (96, 96)]):
            arr = (np.random.default_rng(i).random((h, w, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / f"b{i}.png")
            files.append(tmp_path / f"b{i}.png")
        ds = prepare_dataset(files, tmp_path / "ds", size=64, instance_prompt="sks toy",
                             min_side=32, buckets=True)
        assert len({it.bucket for it in ds.items}) == 3
        cfg = SDTrainConfig(base_model=str(file), single_file_config=str(folder),
                            dataset_dir=str(ds.folder), output_name="sfbk", resolution=64,
                            rank=4, max_steps=20, batch_size=2, checkpoint_every=0,
                            sample_every=0, learning_rate=1e-3, mixed_precision="fp16",
                            prior_preservation=True, class_prompt="a toy", num_class_images=2,
                            sample_steps=4)
        run_id = service.submit_training(studio, cfg)
        v = studio.jobs.wait(run_id, timeout=240)
        log = (studio.jobs.run_dir(run_id) / "log.txt").read_text()
        print(log[-3000:])
        assert v.status == "succeeded", v.error or v.log_tail
        assert "aspect-ratio buckets" in log and "cuda" in log.lower()
        losses = [m["train_loss"] for m in v.metrics if "train_loss" in m]
        assert len(losses) == 20 and all(np.isfinite(losses))
        assert any(p.endswith("sfbk.safetensors") for _, p in service.list_loras(studio))
    finally:
        studio.close()
