"""SD tab with tiny random-weight SD 1.5 / SDXL folders: training, LoRA files, generation.

The folders are built from configs and loaded through the same from_pretrained(folder) path a
hub id takes. One short training run (with prior preservation and samples) is shared by the
tests of this module.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tabs.sd.tiny import make_tiny_sd15

    return make_tiny_sd15(tmp_path_factory.mktemp("sd15"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tabs.sd.dataset import prepare_dataset

    src = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        arr = np.zeros((40, 48, 3), np.uint8)
        arr[..., i] = 255
        arr[10:30, 10:30] = rng.integers(0, 255, (20, 20, 3))
        Image.fromarray(arr).save(src / f"img{i}.png")
        files.append(src / f"img{i}.png")
    return prepare_dataset(files, tmp_path_factory.mktemp("ds"), size=32,
                           instance_prompt="a photo of sks toy", min_side=16)


@pytest.fixture(scope="module")
def trained(tiny, dataset, tmp_path_factory):
    """Six steps with prior preservation, samples at step 3, a checkpoint at step 3."""
    from studio.reporting import Reporter, read_events
    from tabs.sd.train import run

    root = tmp_path_factory.mktemp("train")
    cfg = dict(base_model=str(tiny), dataset_dir=str(dataset.folder), output_name="toy",
               lora_library=str(root / "library"), class_cache=str(root / "cache"),
               resolution=32, rank=4, alpha=8, max_steps=6, learning_rate=5e-3,
               prior_preservation=True, class_prompt="a photo of a toy", num_class_images=2,
               sample_prompts=["a photo of sks toy"], sample_every=3, sample_steps=2,
               checkpoint_every=3, trigger_words=["sks"], dataset_hash=dataset.hash)
    report = Reporter(root / "run")
    run(cfg, report)
    report.close()
    return {"cfg": cfg, "run_dir": root / "run", "events": read_events(root / "run"),
            "root": root}


def _pipe(folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _draw(pipe, prompt="a photo of sks toy", seed=3):
    return pipe(prompt, num_inference_steps=2, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(seed)).images[0]


def test_training_saves_both_layouts_samples_checkpoint_and_card(trained):
    ev = trained["events"]
    arts = {Path(e["path"]).name: e for e in ev if e["type"] == "artifact"}
    assert {"toy.safetensors", "toy_kohya.safetensors", "README.md"} <= set(arts)
    assert "step000003-0.png" in arts and "step000006-0.png" in arts  # samples every 3 steps
    assert [e["step"] for e in ev if e["type"] == "checkpoint"] == [3]
    assert [e["step"] for e in ev if e["type"] == "metrics"] == [1, 2, 3, 4, 5, 6]
    lib = trained["root"] / "library"
    assert (lib / "toy.safetensors").exists() and (lib / "toy_kohya.safetensors").exists()
    card = (trained["run_dir"] / "README.md").read_text()
    assert trained["cfg"]["dataset_hash"] in card and "rank 4" in card


def test_prior_preservation_images_are_generated_cached_and_used(trained, tiny):
    from tabs.sd.config import SDTrainConfig
    from tabs.sd.train import class_cache_dir

    cfg = SDTrainConfig.from_dict(trained["cfg"])
    made = sorted(class_cache_dir(cfg).glob("class-*.png"))
    assert len(made) == 2
    with Image.open(made[0]) as im:
        assert im.size == (32, 32)
    metrics = [e for e in trained["events"] if e["type"] == "metrics"]
    assert all(m["prior_loss"] > 0 for m in metrics)  # the class images were in every batch
    log = (trained["run_dir"] / "log.txt").read_text()
    assert "drawing 2 class images" in log


def test_training_changes_output_and_both_files_load_the_same(trained, tiny):
    base_pipe = _pipe(tiny)
    base = _draw(base_pipe)
    lib = trained["root"] / "library"
    a = _pipe(tiny)
    a.load_lora_weights(str(lib / "toy.safetensors"), adapter_name="d")
    with_lora = _draw(a)
    assert np.abs(with_lora - base).max() > 1e-3  # six steps changed what it draws
    b = _pipe(tiny)
    b.load_lora_weights(str(lib / "toy_kohya.safetensors"), adapter_name="k")  # kohya layout
    np.testing.assert_allclose(_draw(b), with_lora, atol=1e-5)
    a.set_adapters(["d"], adapter_weights=[0.0])
    assert np.array_equal(_draw(a), base)  # strength 0 is exactly the base model


def test_kohya_conversion_both_ways(trained, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from tabs.sd import lora_io

    lib = trained["root"] / "library"
    diff = load_file(str(lib / "toy.safetensors"))
    kohya = load_file(str(lib / "toy_kohya.safetensors"))
    assert any(k.startswith("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q")
               for k in kohya)
    assert all(float(v) == 8.0 for k, v in kohya.items() if k.endswith(".alpha"))
    with safe_open(str(lib / "toy_kohya.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "8"
    assert meta["modelspec.trigger_phrase"] == "sks"
    assert meta["ss_base_model_version"] == "sd_v1"
    # kohya -> diffusers layout: the same tensors under the same keys
    back = lora_io.kohya_file_to_diffusers(lib / "toy_kohya.safetensors", tmp_path)
    again = load_file(str(back))
    assert set(again) == set(diff)
    for k in diff:
        assert torch.equal(again[k], diff[k]), k
    # diffusers -> kohya from PEFT keys reproduces the saved kohya file
    unet = {k.removeprefix("unet."): v for k, v in diff.items() if k.startswith("unet.")}
    assert set(lora_io.to_kohya(unet, None, 8.0)) == set(kohya)
    info = lora_io.read_info(back)
    assert info.rank == 4 and info.alpha == 8.0 and info.trigger_words == ["sks"]


def test_text_encoder_lora_round_trips_in_kohya_layout(tiny, tmp_path):
    from peft import LoraConfig

    from tabs.sd import lora_io
    from tabs.sd.train import TE_TARGETS

    pipe = _pipe(tiny)
    pipe.text_encoder.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=TE_TARGETS))
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"]))
    for n, p in list(pipe.text_encoder.named_parameters()) + list(pipe.unet.named_parameters()):
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.3)
    expected = _draw(pipe)
    unet_sd, te_sd = lora_io.peft_state_dicts(pipe.unet, pipe.text_encoder)
    saved = lora_io.save_lora(tmp_path, unet_sd, te_sd,
                              lora_io.LoraInfo(name="te", base_model=str(tiny), rank=2, alpha=2))
    keys = load_keys(saved.kohya_path)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for k in keys)
    fresh = _pipe(tiny)
    fresh.load_lora_weights(str(saved.kohya_path))
    np.testing.assert_allclose(_draw(fresh), expected, atol=1e-5)


def load_keys(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


@pytest.mark.slow  # ~1 minute on 2 cores; CI runs it
def test_resume_continues_from_the_checkpoint(trained, tiny, dataset, tmp_path):
    """A run stopped at step 3 and resumed ends where the uninterrupted run ended."""
    from studio.reporting import Reporter, read_events
    from tabs.sd.train import run

    cfg = dict(trained["cfg"], sample_prompts=[], max_steps=6, output_name="resumed",
               lora_library=str(tmp_path / "lib"))
    first = Reporter(tmp_path / "run")
    real_metrics = first.metrics

    def stop_after_three(step, **values):
        real_metrics(step, **values)
        if step == 3:
            first.request_stop()

    first.metrics = stop_after_three
    run(cfg, first)
    first.close()
    ev = read_events(tmp_path / "run")
    assert [e["step"] for e in ev if e["type"] == "checkpoint"][-1] == 3
    assert any("stopped early" in e.get("label", "") for e in ev if e["type"] == "artifact")
    second = Reporter(tmp_path / "run", resume=True)
    run(cfg, second)
    second.close()
    steps = [e["step"] for e in read_events(tmp_path / "run") if e["type"] == "metrics"]
    assert steps == [1, 2, 3, 4, 5, 6]
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "lib" / "resumed.safetensors"))
    want = load_file(str(trained["root"] / "library" / "toy.safetensors"))
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6)


def test_generate_png_chunks_strength_zero_and_stop(trained, tiny, tmp_path):
    from studio.config import Settings
    from studio.context import build_studio
    from studio.devices import CpuProbe
    from tabs.sd.generate import GenerateRequest, LoraChoice, generate, read_png_parameters

    studio = build_studio(Settings(home=tmp_path / "home"), probe=CpuProbe(), start_jobs=False)
    lora = str(trained["root"] / "library" / "toy.safetensors")
    req = GenerateRequest(base=str(tiny), prompt="a photo of sks toy", steps=3, width=32,
                          height=32, seed=11)
    base = generate(studio, req, tmp_path / "out")
    zero = generate(studio, dataclasses.replace(req, loras=[LoraChoice(lora, 0.0)]),
                    tmp_path / "out")
    full = generate(studio, dataclasses.replace(req, loras=[LoraChoice(lora, 1.0)]),
                    tmp_path / "out")

    def px(r):
        return np.asarray(Image.open(r.images[0].path)).astype(int)

    assert np.array_equal(px(zero), px(base))
    assert np.abs(px(full) - px(base)).max() > 0
    text = read_png_parameters(full.images[0].path)
    assert text["seed"] == "11" and text["prompt"] == "a photo of sks toy"
    assert "<lora:toy:1>" in text["parameters"] and "Seed: 11" in text["parameters"]
    assert studio.models.stats(f"sd:sd15:{tiny}")["loads"] == 1  # one load, reused

    seen = []
    stopped = generate(studio, dataclasses.replace(req, steps=20, batch=2),
                       tmp_path / "out", on_step=lambda i, n: seen.append((i, n)),
                       should_stop=lambda: len(seen) >= 2)
    assert stopped.stopped_at == 2 and seen == [(1, 20), (2, 20)]
    assert [im.seed for im in stopped.images] == [11, 12]


def test_sdxl_generation_through_the_manager(tmp_path):
    from studio.config import Settings
    from studio.context import build_studio
    from studio.devices import CpuProbe
    from tabs.sd.generate import GenerateRequest, generate
    from tabs.sd.tiny import make_tiny_sdxl

    folder = make_tiny_sdxl(tmp_path / "sdxl")
    studio = build_studio(Settings(home=tmp_path / "home"), probe=CpuProbe(), start_jobs=False)
    r = generate(studio, GenerateRequest(base=str(folder), arch="sdxl", prompt="a cat", steps=2,
                                         width=32, height=32, seed=1, scheduler="Euler a"),
                 tmp_path / "out")
    with Image.open(r.images[0].path) as im:
        assert im.size == (32, 32)
    assert r.plan.startswith("SDXL")
