"""What the SD tab's buttons do, without Gradio: prepare a dataset, estimate, submit a job,
list LoRAs and base models. Paths all live under the studio home."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from studio.safety import extract_budget, path_under
from tabs.sd import lora_io, single_file
from tabs.sd.config import SDTrainConfig, TrainEstimate, estimate_training, steps_for_epochs
from tabs.sd.dataset import PreparedDataset, load_dataset, prepare_dataset, update_captions
from tabs.sd.train import check_trainable_base

KIND = "sd"
ENTRY = "tabs.sd.train:run"


def prepared_root(studio: Any) -> Path:
    """Where prepared datasets live; caption edits and training only take folders in here."""
    root = Path(studio.settings.uploads_dir) / "sd"
    root.mkdir(parents=True, exist_ok=True)
    return root


def prepared_folder(studio: Any, folder: str | Path) -> Path:
    """A prepared dataset folder given by the UI or a script, refused outside `prepared_root`
    (so no caption save or training run touches a folder elsewhere on the disk)."""
    return path_under(prepared_root(studio), folder, label="Prepared dataset folder",
                      must_exist=True)


def save_captions(studio: Any, folder: str | Path, captions: dict[str, str]) -> PreparedDataset:
    return update_captions(prepared_folder(studio, folder), captions)


def lora_library(studio: Any) -> Path:
    """Where finished LoRAs are copied; the Generate tab lists this folder."""
    return studio.settings.exports_dir / "sd_loras"


def prepare(studio: Any, files: list[str], size: int, instance_prompt: str,
            buckets: bool = False, crop: str = "center") -> PreparedDataset:
    if not files:
        raise ValueError("upload images (or a zip) first")
    # One new folder per preparation: two in the same second never share (or delete) one.
    out = Path(tempfile.mkdtemp(dir=prepared_root(studio),
                                prefix=time.strftime("%Y%m%d-%H%M%S-")))
    ds = prepare_dataset([Path(f) for f in files], out, size=size,
                         instance_prompt=instance_prompt, buckets=buckets, crop=crop,
                         budget=extract_budget(studio.settings))
    if not ds.items:
        raise ValueError("no usable images:\n" + ds.report())
    return ds


def complete_config(studio: Any, cfg: SDTrainConfig) -> tuple[SDTrainConfig, TrainEstimate]:
    """Fill in the studio's folders and turn "auto" checkpointing into the budget's answer."""
    cfg.lora_library = cfg.lora_library or str(lora_library(studio))
    cfg.class_cache = cfg.class_cache or str(studio.settings.cache_dir / "sd_class_images")
    est = estimate_training(cfg, studio.models.budget)
    if cfg.gradient_checkpointing == "auto":
        cfg.gradient_checkpointing = "on" if est.gradient_checkpointing else "off"
    cfg.validate()
    return cfg, est


def submit_training(studio: Any, cfg: SDTrainConfig) -> str:
    """Check the dataset and the memory, then queue the job. Returns the run id."""
    check_trainable_base(cfg.base_model)
    from studio.hub import require_local  # a hub base not on disk: the Models tab, not the job

    require_local(studio, cfg.base_model, "The base model")
    if single_file.is_single_file(cfg.base_model):  # fail now, not in the job, when offline
        single_file.resolve_config(cfg.base_model, cfg.single_file_config)
    ds = load_dataset(prepared_folder(studio, cfg.dataset_dir))
    if cfg.class_images_dir:
        cfg.class_images_dir = str(path_under(studio.settings.home, cfg.class_images_dir,
                                              label="Your own class images", must_exist=True))
    cfg.dataset_hash = ds.hash
    if cfg.epochs > 0:
        cfg.max_steps = steps_for_epochs(cfg.epochs, len(ds.items), cfg.batch_size,
                                         cfg.grad_accumulation)
    cfg, est = complete_config(studio, cfg)
    cuda = studio.probe.device == "cuda"
    if cuda and not est.fits:
        raise ValueError("this will not fit: " + est.describe() +
                         " Lower the resolution, batch or rank, or turn checkpointing on.")
    length = f"{cfg.epochs} epochs = " if cfg.epochs > 0 else ""
    title = (f"SD LoRA {cfg.output_name} (r{cfg.rank}, {length}{cfg.max_steps} steps, "
             f"{len(ds.items)} img)")
    return studio.jobs.submit(kind=KIND, entry=ENTRY, config=cfg.to_dict(), title=title,
                              vram_bytes=est.total if cuda else 0,
                              dataset_hash=cfg.dataset_hash, seed=cfg.seed)


def list_loras(studio: Any) -> list[tuple[str, str]]:
    """(label, path) of every LoRA in the library, newest first."""
    out = []
    for p in lora_io.list_loras(lora_library(studio)):
        info = lora_io.read_info(p)
        extra = f" — r{info.rank}, {', '.join(info.trigger_words)}" if info else ""
        out.append((f"{p.stem}{extra}", str(p)))
    return out


def base_choices(studio: Any, arch: str) -> list[str]:
    """The profile's base model for `arch` (a hub id on the full profile) if it has one."""
    choice = studio.choices.get("sd" if arch == "sd15" else "sdxl")
    return [choice.source] if choice is not None and choice.source else []


def sample_images(studio: Any, run_id: str | None) -> list[tuple[str, str]]:
    """(path, caption) of a run's sample images, newest last, for the gallery."""
    if not run_id:
        return []
    try:
        v = studio.jobs.view(run_id, log_lines=0)
    except KeyError:
        return []
    return [(a["path"], a["label"]) for a in v.artifacts if a["kind"] == "image"]
