"""Tiny random-weight Stable Diffusion folders, built from configs.

No diffusion weights exist offline, so tests (and a CPU demo) build a few-kilobyte SD 1.5 or
SDXL of the real architecture, save it as an ordinary diffusers folder, and load it through the
same ``from_pretrained(folder)`` path a real user's hub id takes. Shapes follow diffusers' own
``get_dummy_components()``.
"""

from __future__ import annotations

import json
from pathlib import Path


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2's table)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def _write_clip_tokenizer(folder: Path) -> None:
    """A byte-level CLIP BPE tokenizer with no merges: every byte is a token."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                        model_max_length=77, pad_token="<|endoftext|>")
    tok.save_pretrained(folder)


def _text_config(projection: bool = False):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32,
                          intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                          vocab_size=600, projection_dim=32 if projection else 512,
                          max_position_embeddings=77)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                         up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
                         latent_channels=4, norm_num_groups=4, sample_size=32)


def make_tiny_sd15(folder: Path, seed: int = 0) -> Path:
    """Save a tiny SD 1.5-architecture pipeline (random weights) to `folder`."""
    import torch
    from diffusers import (
        DDPMScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        norm_num_groups=4, attention_head_dim=4)
    vae = _vae()
    text_encoder = CLIPTextModel(_text_config())
    _write_clip_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    # As SD 1.5's own scheduler config (clip_sample is read by the pipeline, not PNDM).
    scheduler = PNDMScheduler.from_config({
        "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False})
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder,
                                   tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    # Training reads the noise schedule the base model was trained with, as diffusers does.
    DDPMScheduler.from_config(scheduler.config).save_pretrained(folder / "scheduler")
    return folder


def make_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    """Save a tiny SDXL-architecture pipeline (random weights, two text encoders)."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=4)
    vae = _vae()
    te1 = CLIPTextModel(_text_config())
    te2 = CLIPTextModelWithProjection(_text_config(projection=True))
    _write_clip_tokenizer(folder / "tokenizer")
    _write_clip_tokenizer(folder / "tokenizer_2")
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    tok2 = CLIPTokenizer.from_pretrained(folder / "tokenizer_2")
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear",
                                       timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok,
                                     tokenizer_2=tok2, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(folder)
    return folder


# --- test support: a diffusers SD 1.5 folder -> one original-layout (LDM) .safetensors file ---
# diffusers ships only the original -> diffusers direction (loaders/single_file_utils.py); this is
# its inverse for the SD 1.x layout, general in the block count so the tiny model fits it too.

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                "conv_shortcut": "skip_connection"}
_UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_FIXED = {"conv_norm_out": "norm_out"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_to_ldm(key: str, config: dict) -> str:
    """One diffusers UNet key -> its name under ``model.diffusion_model.``."""
    n = config["layers_per_block"] + 1
    for old, new in _UNET_FIXED.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    parts = key.split(".")
    if parts[0] == "mid_block":
        kind, idx, rest = parts[1], int(parts[2]), parts[3:]
        if kind == "resnets":
            return ".".join([f"middle_block.{2 * idx}", _UNET_RESNET[rest[0]], *rest[1:]])
        return ".".join([f"middle_block.{2 * idx + 1}", *rest])
    where, block, kind = parts[0], int(parts[1]), parts[2]
    if kind in ("downsamplers", "upsamplers"):
        param = parts[-1]
        if where == "down_blocks":
            return f"input_blocks.{n * (block + 1)}.0.op.{param}"
        has_attn = "CrossAttn" in config["up_block_types"][block]
        return f"output_blocks.{n * block + n - 1}.{2 if has_attn else 1}.conv.{param}"
    layer, rest = int(parts[3]), parts[4:]
    index = n * block + layer + 1 if where == "down_blocks" else n * block + layer
    prefix = "input_blocks" if where == "down_blocks" else "output_blocks"
    if kind == "resnets":
        return ".".join([f"{prefix}.{index}.0", _UNET_RESNET[rest[0]], *rest[1:]])
    return ".".join([f"{prefix}.{index}.1", *rest])


def _vae_to_ldm(key: str, n_up: int) -> str:
    """One diffusers VAE key -> its name under ``first_stage_model.``."""
    side, rest = key.split(".", 1)
    if side not in ("encoder", "decoder"):
        return key  # quant_conv, post_quant_conv
    for old, new in _VAE_FIXED.items():
        rest = rest.replace(old, new)
    parts = rest.split(".")
    if parts[0] in ("down_blocks", "up_blocks"):
        i = int(parts[1])
        ldm_i = i if parts[0] == "down_blocks" else n_up - 1 - i
        head = f"{'down' if parts[0] == 'down_blocks' else 'up'}.{ldm_i}"
        if parts[2] == "resnets":
            tail = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
            return f"{side}.{head}.block.{parts[3]}.{tail}"
        sampler = "downsample" if parts[0] == "down_blocks" else "upsample"
        return f"{side}.{head}.{sampler}.conv.{parts[-1]}"
    if parts[0] == "mid_block" and parts[1] == "resnets":
        tail = ".".join(parts[3:]).replace("conv_shortcut", "nin_shortcut")
        return f"{side}.mid.block_{int(parts[2]) + 1}.{tail}"
    if parts[0] == "mid_block" and parts[1] == "attentions":
        tail = ".".join(parts[3:])
        for old, new in _VAE_ATTN.items():
            if tail.startswith(old + "."):
                tail = new + tail[len(old):]
        return f"{side}.mid.attn_1.{tail}"
    return f"{side}.{rest}"


def save_original_single_file(folder: Path, path: Path) -> Path:
    """Write a diffusers SD 1.x folder as one original-layout ``.safetensors`` (as on Civitai)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    folder = Path(folder)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    te = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    out: dict[str, torch.Tensor] = {}
    for k, v in unet.state_dict().items():
        out["model.diffusion_model." + _unet_to_ldm(k, dict(unet.config))] = v
    n_up = len(vae.config.up_block_types)
    for k, v in vae.state_dict().items():
        name = "first_stage_model." + _vae_to_ldm(k, n_up)
        if ".mid.attn_1." in name and name.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]  # the original VAE attention is 1x1 convolutions
        out[name] = v
    for k, v in te.state_dict().items():
        out["cond_stage_model.transformer.text_model." + k.removeprefix("text_model.")] = v
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, path)
    return path
