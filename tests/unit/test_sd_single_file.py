"""Single-file base checkpoints (one original-layout .safetensors, as from Civitai): the tiny
SD 1.5 is written in the original layout, then generation and training from that file must
match the same model loaded from its diffusers folder; pickle files, SDXL files for training,
non-checkpoints and a missing config are refused with reasons."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(diffusers folder, the same weights as one original-layout file)."""
    from tabs.sd.tiny import make_tiny_sd15, save_original_single_file

    root = tmp_path_factory.mktemp("sf")
    folder = make_tiny_sd15(root / "tiny15")
    return folder, save_original_single_file(folder, root / "civitai" / "tiny15.safetensors")


def _studio(home: Path):
    from studio.config import Settings
    from studio.context import build_studio
    from studio.devices import CpuProbe

    return build_studio(Settings(home=home), probe=CpuProbe(), start_jobs=False)


def test_original_layout_names_match_real_sd15_checkpoints():
    """The test-support writer uses the names real SD 1.5 files have (input_blocks.3.0.op, ...)."""
    from tabs.sd.tiny import _unet_to_ldm, _vae_to_ldm

    sd15 = {"layers_per_block": 2,
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                               "CrossAttnUpBlock2D"]}
    assert _unet_to_ldm("down_blocks.0.downsamplers.0.conv.weight", sd15) == \
        "input_blocks.3.0.op.weight"
    assert _unet_to_ldm("down_blocks.1.attentions.1.proj_in.weight", sd15) == \
        "input_blocks.5.1.proj_in.weight"
    assert _unet_to_ldm("up_blocks.0.upsamplers.0.conv.bias", sd15) == \
        "output_blocks.2.1.conv.bias"
    assert _unet_to_ldm("up_blocks.1.upsamplers.0.conv.bias", sd15) == \
        "output_blocks.5.2.conv.bias"
    assert _unet_to_ldm("up_blocks.3.resnets.2.conv_shortcut.weight", sd15) == \
        "output_blocks.11.0.skip_connection.weight"  # diffusers' own SD 1.x marker key
    assert _unet_to_ldm("mid_block.resnets.1.time_emb_proj.weight", sd15) == \
        "middle_block.2.emb_layers.1.weight"
    assert _vae_to_ldm("decoder.up_blocks.0.upsamplers.0.conv.weight", 4) == \
        "decoder.up.3.upsample.conv.weight"
    assert _vae_to_ldm("encoder.mid_block.attentions.0.to_out.0.weight", 4) == \
        "encoder.mid.attn_1.proj_out.weight"


def test_generation_from_the_file_matches_the_folder(tiny, tmp_path):
    from tabs.sd import single_file
    from tabs.sd.generate import GenerateRequest, generate

    folder, file = tiny
    assert single_file.detect_arch(file) == "sd15"
    assert single_file.default_config(file) == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    studio = _studio(tmp_path / "home")
    req = GenerateRequest(base=str(folder), prompt="a photo of a toy", steps=3, width=32,
                          height=32, seed=5)
    from_folder = generate(studio, req, tmp_path / "out")
    from_file = generate(studio, dataclasses.replace(req, base=str(file),
                                                     single_file_config=str(folder)),
                         tmp_path / "out")
    a = np.asarray(Image.open(from_folder.images[0].path)).astype(int)
    b = np.asarray(Image.open(from_file.images[0].path)).astype(int)
    assert a.std() > 0  # a real picture, not a blank
    assert np.array_equal(a, b)  # same weights after conversion -> same image, same seed
    keys = {r.key for r in studio.models.loaded()}
    assert any(str(file) in k for k in keys)  # a managed model of its own


def test_training_from_the_file_matches_the_folder(tiny, tmp_path):
    from safetensors.torch import load_file

    from studio.reporting import Reporter
    from tabs.sd.dataset import prepare_dataset
    from tabs.sd.train import run

    folder, file = tiny
    src = []
    for i in range(2):
        arr = np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / f"i{i}.png")
        src.append(tmp_path / f"i{i}.png")
    ds = prepare_dataset(src, tmp_path / "ds", size=32, instance_prompt="sks toy", min_side=16)
    out = {}
    for name, base, config in (("f", str(folder), ""), ("s", str(file), str(folder))):
        cfg = dict(base_model=base, single_file_config=config, dataset_dir=str(ds.folder),
                   output_name=name, lora_library=str(tmp_path / "lib"), resolution=32, rank=4,
                   max_steps=3, learning_rate=5e-3, sample_every=0, checkpoint_every=0,
                   class_cache=str(tmp_path / "cache"))
        report = Reporter(tmp_path / f"run_{name}")
        run(cfg, report)
        report.close()
        out[name] = load_file(str(tmp_path / "lib" / f"{name}.safetensors"))
    assert set(out["f"]) == set(out["s"]) and out["f"]
    for k in out["f"]:
        torch.testing.assert_close(out["s"][k], out["f"][k], rtol=1e-5, atol=1e-6)
    assert any(v.abs().max() > 0 for k, v in out["s"].items() if "lora_B" in k)  # it trained


def _fake_sdxl(path: Path) -> Path:
    """Only the key names diffusers detects SDXL by (a few bytes, no real weights)."""
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 1, 1),
               "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias":
                   torch.zeros(2)}, path)
    return path


def test_refusals_say_why(tiny, tmp_path):
    from tabs.sd import single_file
    from tabs.sd.config import SDTrainConfig
    from tabs.sd.generate import GenerateRequest, LoraChoice
    from tabs.sd.train import check_trainable_base

    folder, file = tiny
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pickle"):
        single_file.check_base(str(ckpt))
    with pytest.raises(ValueError, match="pickle"):
        SDTrainConfig(base_model=str(ckpt)).validate()
    with pytest.raises(ValueError, match="pickle"):
        GenerateRequest(base=str(ckpt), prompt="x").validate()
    with pytest.raises(ValueError, match="not found"):
        single_file.check_base(str(tmp_path / "missing.safetensors"))

    xl = _fake_sdxl(tmp_path / "xl.safetensors")
    assert single_file.detect_arch(xl) == "sdxl"
    assert single_file.default_config(xl) == "stabilityai/stable-diffusion-xl-base-1.0"
    with pytest.raises(ValueError, match="needs an SD 1.5 base"):
        check_trainable_base(str(xl))
    with pytest.raises(ValueError, match="choose SDXL"):
        GenerateRequest(base=str(xl), prompt="x", arch="sd15").validate()
    GenerateRequest(base=str(xl), prompt="x", arch="sdxl").validate()

    lora = tmp_path / "lora.safetensors"
    from safetensors.torch import save_file

    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1)}, lora)
    with pytest.raises(ValueError, match="not a Stable Diffusion checkpoint"):
        single_file.detect_arch(lora)

    # a LoRA made for the other architecture is refused before anything loads
    sdxl_lora = tmp_path / "xl_lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1)}, sdxl_lora,
              metadata={"ss_network_dim": "4", "ss_base_model_version": "sdxl_base_v1-0"})
    with pytest.raises(ValueError, match="trained for SDXL"):
        GenerateRequest(base=str(folder), prompt="x", arch="sd15",
                        loras=[LoraChoice(str(sdxl_lora))]).validate()

    # offline (tests run with HF_HUB_OFFLINE=1) and no config folder given: a clear way out
    with pytest.raises(ValueError, match="Config for single files"):
        single_file.resolve_config(file)
    assert single_file.resolve_config(file, str(folder)) == str(folder)
