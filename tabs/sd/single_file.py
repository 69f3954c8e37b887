"""Single-file base checkpoints: one original-layout ``.safetensors`` as users download them
(Civitai, the original SD 1.5 / SDXL releases), for both training and generation.

diffusers' ``from_single_file`` converts the weights; what it cannot get from the file is the
diffusers config of each part (UNet shape, tokenizer, scheduler). That comes from a folder of the
same architecture:

- a user's setting ("Config for single files": a hub id or a local diffusers folder), else
- the hub repo of the architecture detected from the file's keys (SD 1.5 ->
  ``stable-diffusion-v1-5/stable-diffusion-v1-5``, SDXL -> ``stabilityai/stable-diffusion-xl-
  base-1.0``), only its small json/txt files are fetched, exactly as diffusers does by default.

Pickle checkpoints (``.ckpt``/``.pt``/``.pth``/``.bin``) are refused: loading one can run code
hidden in it, and every popular model is published as ``.safetensors`` too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

SAFE_EXT = ".safetensors"
PICKLE_EXTS = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
# diffusers' model types (infer_diffusers_model_type) this tab can run, and their pipelines.
ARCH_OF_TYPE = {"v1": "sd15", "xl_base": "sdxl"}
ARCH_NAMES = {"sd15": "SD 1.5", "sdxl": "SDXL"}


def is_single_file(base: str) -> bool:
    """True for a path to one checkpoint file (not a hub id or a diffusers folder)."""
    return base.strip().lower().endswith((SAFE_EXT, *PICKLE_EXTS))


def check_base(base: str) -> None:
    """Refuse what cannot be loaded safely, with a message a user can act on."""
    name = base.strip()
    if name.lower().endswith(PICKLE_EXTS):
        raise ValueError(
            f"{Path(name).name} is a pickle checkpoint, which can run code when it is loaded; "
            "use the .safetensors version of this model (most sites offer one), or convert "
            "it once in a tool you trust.")
    if name.lower().endswith(SAFE_EXT) and not Path(name).is_file():
        raise ValueError(f"checkpoint file not found: {name}")
    from studio.safety import check_model_source

    # Folders too: a diffusers folder whose .bin weights are pickles that could run code.
    check_model_source(name, label="Base model")


class _HeaderShapes(Mapping):
    """``{key: meta tensor}`` of a .safetensors file, read from its header only.

    diffusers' ``infer_diffusers_model_type`` looks at key names and a few shapes; meta tensors
    give it both without reading gigabytes of weights.
    """

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            self._shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}

    def __getitem__(self, key: str) -> Any:
        import torch

        return torch.empty(self._shapes[key], device="meta")

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)


def detect_type(path: str | Path) -> str:
    """diffusers' name for the model in the file ("v1", "v2", "xl_base", ...)."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    try:
        shapes = _HeaderShapes(Path(path))
    except Exception as e:  # truncated download, not a safetensors file
        raise ValueError(f"{Path(path).name} is not a readable .safetensors checkpoint "
                         f"({type(e).__name__}: {e})") from None
    if not any(k.startswith("model.diffusion_model.") for k in shapes):
        raise ValueError(f"{Path(path).name} is not a Stable Diffusion checkpoint in the "
                         "original layout (no model.diffusion_model.* weights); a LoRA or a "
                         "VAE alone cannot be a base model")
    try:
        return infer_diffusers_model_type(shapes)
    except (IndexError, KeyError, TypeError) as e:  # marker keys with unexpected shapes
        raise ValueError(f"{Path(path).name}: unrecognised checkpoint layout ({e})") from None


def detect_arch(path: str | Path) -> str:
    """"sd15" or "sdxl" for a supported checkpoint; ValueError naming what it is otherwise."""
    kind = detect_type(path)
    if kind not in ARCH_OF_TYPE:
        raise ValueError(f"{Path(path).name} is a '{kind}' checkpoint; this tab runs SD 1.x "
                         "and SDXL base models only")
    return ARCH_OF_TYPE[kind]


def default_config(path: str | Path) -> str:
    """The hub repo whose configs match the file's architecture (diffusers' own table)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS

    return DIFFUSERS_DEFAULT_PIPELINE_PATHS[detect_type(path)]["pretrained_model_name_or_path"]


def resolve_config(path: str | Path, override: str = "") -> str:
    """A local folder with the diffusers configs for this file (fetched from the hub if needed)."""
    source = override.strip() or default_config(path)
    if Path(source).is_dir():
        return source
    from huggingface_hub import snapshot_download

    patterns = ["**/*.json", "*.json", "*.txt", "**/*.txt", "**/*.model"]
    try:  # on disk already (e.g. the Models tab downloaded the repo): no network at all
        return snapshot_download(source, allow_patterns=patterns, local_files_only=True)
    except Exception:
        pass
    try:
        # Only the small config/tokenizer files (kilobytes), as from_single_file fetches them.
        return snapshot_download(source, allow_patterns=patterns)
    except Exception as e:
        raise ValueError(
            f"{Path(path).name} needs the configs of {source} (tokenizer, scheduler, model "
            f"shapes) and they could not be fetched ({type(e).__name__}). Offline? Set "
            "'Config for single files' to a local diffusers folder of the same architecture."
        ) from None


def load_pipeline(cls: Any, path: str | Path, config: str = "", **kwargs: Any) -> Any:
    """``cls.from_single_file`` with the configs resolved first (clear errors when offline)."""
    folder = resolve_config(path, config)
    return cls.from_single_file(str(path), config=folder, **kwargs)
