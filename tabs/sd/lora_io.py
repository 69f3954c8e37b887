"""LoRA files: the diffusers layout and the kohya layout AUTOMATIC1111, Forge and ComfyUI read.

A trained LoRA is saved twice, with the same tensors and the same metadata:

- ``NAME.safetensors``: diffusers' own layout (``unet.….lora_A.weight`` with the PEFT config in
  ``lora_adapter_metadata``), written by ``save_lora_weights`` and read by ``load_lora_weights``.
- ``NAME_kohya.safetensors``: ``lora_unet_…/lora_te_…`` keys with ``lora_down``/``lora_up`` and a
  per-module ``alpha``, plus the ``ss_*``/``modelspec.*`` metadata those tools show (base model,
  rank, alpha, trigger words, training settings).

SD 1.x kohya files use diffusers module names with ``_`` for ``.``, which is what kohya's own
trainer writes for SD 1.x and what A1111's ``convert_diffusers_name_to_compvis`` maps.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KOHYA_SUFFIX = "_kohya"
# Names that contain "_" themselves; everything else in a kohya key's "_" was a ".".
_COMPOUNDS = (
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_out", "to_q", "to_k",
    "to_v", "proj_in", "proj_out", "time_emb_proj", "conv_shortcut", "conv_in", "conv_out",
    "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "time_embedding",
    "linear_1", "linear_2", "final_layer_norm", "layer_norm1", "layer_norm2",
)


@dataclass
class LoraInfo:
    """What a LoRA file says about itself; saved as metadata in both layouts."""

    name: str
    base_model: str
    rank: int
    alpha: float
    trigger_words: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    arch: str = "sd15"
    dataset_hash: str = ""
    steps: int = 0


def peft_state_dicts(unet: Any, text_encoder: Any = None) -> tuple[dict, dict | None]:
    """The trained LoRA tensors as PEFT keys (``module.lora_A.weight``), on CPU in fp32."""
    from peft.utils import get_peft_model_state_dict

    def grab(model):
        sd = get_peft_model_state_dict(model)
        return {k: v.detach().to("cpu", dtype=_float32()).contiguous() for k, v in sd.items()}

    te = grab(text_encoder) if text_encoder is not None and _has_lora(text_encoder) else None
    return grab(unet), te


def _float32():
    import torch

    return torch.float32


def _has_lora(model: Any) -> bool:
    return any("lora_A" in name for name, _ in model.named_parameters())


def to_kohya(unet_sd: dict, te_sd: dict | None, alpha: float) -> dict:
    """PEFT/diffusers LoRA keys -> kohya keys with ``lora_down``/``lora_up`` and ``alpha``."""
    import torch

    out: dict[str, Any] = {}
    for prefix, sd in (("lora_unet", unet_sd), ("lora_te", te_sd or {})):
        for key, tensor in sd.items():
            module, _, kind = key.rpartition(".lora_")
            kind = kind.split(".")[0]  # "A" or "B"
            if prefix == "lora_te" and not module.startswith("text_model."):
                # transformers 5 dropped CLIPTextModel's `text_model` level; A1111 expects it.
                module = f"text_model.{module}"
            name = f"{prefix}_{module.replace('.', '_')}"
            out[f"{name}.lora_{'down' if kind == 'A' else 'up'}.weight"] = tensor
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def _module_from_kohya(name: str) -> str:
    """``down_blocks_0_attentions_0_…_to_out_0`` -> ``down_blocks.0.attentions.0.….to_out.0``."""
    for c in sorted(_COMPOUNDS, key=len, reverse=True):
        name = re.sub(rf"(?<![^_]){c}(?![^_])", c.replace("_", "\0"), name)
    return name.replace("_", ".").replace("\0", "_")


def from_kohya(kohya_sd: dict) -> tuple[dict, dict | None, float | None]:
    """Kohya keys -> (unet PEFT dict, text-encoder PEFT dict or None, alpha)."""
    unet: dict[str, Any] = {}
    te: dict[str, Any] = {}
    alphas = set()
    for key, tensor in kohya_sd.items():
        name, _, part = key.partition(".")
        if part == "alpha":
            alphas.add(round(float(tensor), 6))
            continue
        if part not in ("lora_down.weight", "lora_up.weight"):
            raise ValueError(f"not a kohya LoRA key: {key}")
        ab = "A" if part.startswith("lora_down") else "B"
        if name.startswith("lora_unet_"):
            unet[f"{_module_from_kohya(name[len('lora_unet_'):])}.lora_{ab}.weight"] = tensor
        elif name.startswith(("lora_te_", "lora_te1_")):
            module = _module_from_kohya(name.split("_", 2)[2]).removeprefix("text_model.")
            te[f"{module}.lora_{ab}.weight"] = tensor
        else:
            raise ValueError(f"unsupported LoRA module (only SD 1.x UNet/text encoder): {key}")
    if len(alphas) > 1:
        raise ValueError(f"this file uses several alphas {sorted(alphas)}; one is supported")
    return unet, te or None, (alphas.pop() if alphas else None)


def kohya_metadata(info: LoraInfo) -> dict[str, str]:
    """The ``ss_*``/``modelspec.*`` fields A1111, Forge and ComfyUI show for a LoRA."""
    version = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}.get(info.arch, info.arch)
    arch = {"sd15": "stable-diffusion-v1/lora", "sdxl": "stable-diffusion-xl-v1-base/lora"}
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(info.rank),
        "ss_network_alpha": str(info.alpha),
        "ss_base_model_version": version,
        "ss_sd_model_name": info.base_model,
        "ss_output_name": info.name,
        "ss_v2": "False",
        "ss_training_comment": ", ".join(info.trigger_words),
        "ss_max_train_steps": str(info.steps),
        "ss_dataset_hash": info.dataset_hash,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": arch.get(info.arch, info.arch),
        "modelspec.implementation": "diffusers",
        "modelspec.title": info.name,
        "modelspec.trigger_phrase": ", ".join(info.trigger_words),
        "studio.info": json.dumps(asdict(info), default=str),
    }


@dataclass
class SavedLora:
    diffusers_path: Path
    kohya_path: Path


def save_lora(folder: Path, unet_sd: dict, te_sd: dict | None, info: LoraInfo) -> SavedLora:
    """Write both layouts into `folder` (NAME.safetensors and NAME_kohya.safetensors)."""
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open
    from safetensors.torch import save_file

    from studio.safety import child_path

    folder = Path(folder)
    # The name comes from the user: it must stay one file name inside `folder`.
    path = child_path(folder, info.name, label="LoRA name", suffix=".safetensors")
    kohya_path = child_path(folder, info.name, label="LoRA name",
                            suffix=f"{KOHYA_SUFFIX}.safetensors")
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"r": info.rank, "lora_alpha": info.alpha, "init_lora_weights": "gaussian",
            "target_modules": sorted({k.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1]
                                      for k in unet_sd})}
    te_meta = None
    if te_sd:
        te_meta = dict(meta, target_modules=sorted({k.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1]
                                                    for k in te_sd}))
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=unet_sd, text_encoder_lora_layers=te_sd, weight_name=path.name,
        unet_lora_adapter_metadata=meta, text_encoder_lora_adapter_metadata=te_meta)
    # Add our metadata next to diffusers' own so the file describes itself anywhere.
    with safe_open(path, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        file_meta = dict(f.metadata() or {})
    file_meta.update(kohya_metadata(info))
    save_file(tensors, path, metadata=file_meta)
    save_file(to_kohya(unet_sd, te_sd, info.alpha), kohya_path, metadata=kohya_metadata(info))
    return SavedLora(path, kohya_path)


def read_info(path: Path) -> LoraInfo | None:
    """The studio metadata of a LoRA file, or what the ss_* fields say for other files."""
    from safetensors import safe_open

    with safe_open(Path(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "studio.info" in meta:
        return LoraInfo(**json.loads(meta["studio.info"]))
    if "ss_network_dim" in meta:
        version = meta.get("ss_base_model_version", "")
        arch = "sdxl" if version.startswith("sdxl") else \
            "sd15" if version in ("", "sd_v1") else version
        return LoraInfo(name=Path(path).stem, base_model=meta.get("ss_sd_model_name", "?"),
                        arch=arch,
                        rank=int(float(meta["ss_network_dim"])),
                        alpha=float(meta.get("ss_network_alpha", meta["ss_network_dim"])),
                        trigger_words=[t for t in meta.get("modelspec.trigger_phrase",
                                                           "").split(", ") if t])
    return None


def kohya_file_to_diffusers(kohya_path: Path, out_folder: Path,
                            info: LoraInfo | None = None) -> Path:
    """Convert a kohya-layout file (ours or kohya's SD 1.x) to the diffusers layout."""
    from safetensors.torch import load_file

    unet_sd, te_sd, alpha = from_kohya(load_file(str(kohya_path)))
    if info is None:
        info = read_info(kohya_path) or LoraInfo(name=Path(kohya_path).stem, base_model="?",
                                                 rank=0, alpha=0.0)
    rank = next(v.shape[0] for k, v in unet_sd.items() if k.endswith("lora_A.weight"))
    info.rank, info.alpha = int(rank), float(alpha if alpha is not None else rank)
    info.name = Path(kohya_path).stem.removesuffix(KOHYA_SUFFIX)
    return save_lora(out_folder, unet_sd, te_sd, info).diffusers_path


def list_loras(*folders: Path) -> list[Path]:
    """Diffusers-layout LoRA files under the given folders, newest first."""
    found = []
    for folder in folders:
        if Path(folder).is_dir():
            found += [p for p in Path(folder).rglob("*.safetensors")
                      if not p.stem.endswith(KOHYA_SUFFIX)]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
