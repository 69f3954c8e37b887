"""What the SD tab's buttons do, without Gradio: prepare a dataset, estimate, submit a job,
list LoRAs and base models. Paths all live under the studio home."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from studio.jobs import ALL
from studio.safety import extract_budget, path_under, user_folder
from tabs.sd import lora_io, single_file
from tabs.sd.config import SDTrainConfig, TrainEstimate, estimate_training, steps_for_epochs
from tabs.sd.dataset import PreparedDataset, load_dataset, prepare_dataset, update_captions
from tabs.sd.train import check_trainable_base

KIND = "sd"
ENTRY = "tabs.sd.train:run"

# Ownership (studio.sessions.owner_of): every function below takes `owner`. An owner's prepared
# datasets and LoRAs live in folders of its own; it uses those and the shared ones (made at the
# service level, or before owners existed), and changes only its own. Another owner's folder
# or LoRA is answered as a missing one. ALL (the default) is the studio itself: the shared
# folders, every right.
OWNERS_DIR = "_owners"  # prepared datasets: <uploads>/sd/_owners/<owner>/...
OWNER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
NO_SESSION = "this page has no session yet; reload it"


def _owner_part(owner: Any) -> str | None:
    """The folder name of `owner` (None for ALL: the shared folders)."""
    if owner is ALL:
        return None
    if owner is None or not OWNER_ID.match(str(owner)):
        raise ValueError(NO_SESSION)
    return str(owner)


def prepared_root(studio: Any, owner: Any = ALL) -> Path:
    """Where `owner`'s prepared datasets live (ALL: the shared ones, and every owner's folder
    below); caption edits and training only take folders in here."""
    root = Path(studio.settings.uploads_dir) / "sd"
    part = _owner_part(owner)
    if part is not None:
        root = root / OWNERS_DIR / part
    root.mkdir(parents=True, exist_ok=True)
    return root


def prepared_folder(studio: Any, folder: str | Path, owner: Any = ALL,
                    write: bool = False) -> Path:
    """A prepared dataset folder given by the UI or a script, refused outside `prepared_root`
    (so no caption save or training run touches a folder elsewhere on the disk) and inside
    another owner's folder; a shared one is read-only for an owner (`write`)."""
    root = Path(studio.settings.uploads_dir) / "sd"
    path = path_under(prepared_root(studio), folder, label="Prepared dataset folder",
                      must_exist=True)
    if owner is ALL:
        return path
    rel = path.relative_to(root.resolve()).parts
    if rel[:1] == (OWNERS_DIR,):
        if rel[1:2] != (_owner_part(owner),):
            raise ValueError(f"No prepared dataset folder {str(folder)[:200]!r}.")
    elif write:
        raise ValueError("that prepared dataset is shared (made outside the studio's pages): "
                         "it can be trained on, not changed; prepare your own")
    return path


def save_captions(studio: Any, folder: str | Path, captions: dict[str, str],
                  owner: Any = ALL) -> tuple[PreparedDataset, int]:
    """Write edited captions; returns the dataset and how many changed."""
    return update_captions(prepared_folder(studio, folder, owner, write=True), captions)


def lora_library(studio: Any, owner: Any = ALL) -> Path:
    """Where finished LoRAs are copied; the Generate tab lists this folder. The shared library
    is ``exports/sd_loras`` (listed with its subfolders), an owner's ``exports/sd_loras_owned/
    <owner>`` (outside it: never listed for another)."""
    part = _owner_part(owner)
    if part is None:
        return studio.settings.exports_dir / "sd_loras"
    return studio.settings.exports_dir / "sd_loras_owned" / part


def prepare(studio: Any, files: list[str], size: int, instance_prompt: str,
            buckets: bool = False, crop: str = "center", owner: Any = ALL) -> PreparedDataset:
    if not files:
        raise ValueError("upload images (or a zip) first")
    # One new folder per preparation: two in the same second never share (or delete) one.
    out = Path(tempfile.mkdtemp(dir=prepared_root(studio, owner),
                                prefix=time.strftime("%Y%m%d-%H%M%S-")))
    ds = prepare_dataset([Path(f) for f in files], out, size=size,
                         instance_prompt=instance_prompt, buckets=buckets, crop=crop,
                         budget=extract_budget(studio.settings))
    if not ds.items:
        raise ValueError("no usable images:\n" + ds.report())
    return ds


def complete_config(studio: Any, cfg: SDTrainConfig,
                    owner: Any = ALL) -> tuple[SDTrainConfig, TrainEstimate]:
    """Fill in the studio's folders (the LoRA goes to `owner`'s library) and turn "auto"
    checkpointing into the budget's answer."""
    cfg.lora_library = cfg.lora_library or str(lora_library(studio, owner))
    cfg.class_cache = cfg.class_cache or str(studio.settings.cache_dir / "sd_class_images")
    est = estimate_training(cfg, studio.models.budget)
    if cfg.gradient_checkpointing == "auto":
        cfg.gradient_checkpointing = "on" if est.gradient_checkpointing else "off"
    cfg.validate()
    return cfg, est


def submit_training(studio: Any, cfg: SDTrainConfig, owner: Any = ALL) -> str:
    """Check the dataset and the memory, then queue the job, `owner`'s. Returns the run id."""
    folder = prepared_folder(studio, cfg.dataset_dir, owner)  # another's: refused first
    check_trainable_base(cfg.base_model)
    # not on disk: the Models tab says so now; on disk: the job loads that folder, offline
    local = resolve_base(studio, cfg.base_model, "sd15")
    cfg.base_model_path = local if local != cfg.base_model.strip() else ""
    if single_file.is_single_file(cfg.base_model):  # fail now, not in the job, when offline
        single_file.resolve_config(cfg.base_model, cfg.single_file_config)
    ds = load_dataset(folder)
    if cfg.class_images_dir:
        cfg.class_images_dir = str(user_folder(studio.settings.home, cfg.class_images_dir,
                                               label="Your own class images"))
    cfg.dataset_hash = ds.hash
    if cfg.epochs > 0:
        cfg.max_steps = steps_for_epochs(cfg.epochs, len(ds.items), cfg.batch_size,
                                         cfg.grad_accumulation)
    cfg, est = complete_config(studio, cfg, owner)
    cuda = studio.probe.device == "cuda"
    if cuda and not est.fits:
        raise ValueError("this will not fit: " + est.describe() +
                         " Lower the resolution, batch or rank, or turn checkpointing on.")
    length = f"{cfg.epochs} epochs = " if cfg.epochs > 0 else ""
    title = (f"SD LoRA {cfg.output_name} (r{cfg.rank}, {length}{cfg.max_steps} steps, "
             f"{len(ds.items)} img)")
    return studio.jobs.submit(kind=KIND, entry=ENTRY, config=cfg.to_dict(), title=title,
                              vram_bytes=est.total if cuda else 0,
                              dataset_hash=cfg.dataset_hash, seed=cfg.seed, owner=owner)


def list_loras(studio: Any, owner: Any = ALL) -> list[tuple[str, str]]:
    """(label, path) of `owner`'s LoRAs and the shared ones, newest first."""
    out = []
    folders = [lora_library(studio)] + ([] if owner is ALL or owner is None
                                        else [lora_library(studio, owner)])
    for p in lora_io.list_loras(*folders):
        info = lora_io.read_info(p)
        extra = f" — r{info.rank}, {', '.join(info.trigger_words)}" if info else ""
        out.append((f"{p.stem}{extra}", str(p)))
    return out


def check_lora(studio: Any, path: str, owner: Any = ALL) -> str:
    """A LoRA path from the request: another owner's (its library, or a run folder of its) is
    "No LoRA 'x'.", as a missing one; the caller's own, shared ones and files elsewhere on the
    disk are as they were."""
    if owner is ALL:
        return path
    p = Path(path).expanduser().resolve()
    mine = None if owner is None else lora_library(studio, owner).resolve()
    owned = (studio.settings.exports_dir / "sd_loras_owned").resolve()
    runs = Path(studio.settings.runs_dir).resolve()
    if p.is_relative_to(owned):
        allowed = mine is not None and p.is_relative_to(mine)
    elif p.is_relative_to(runs):
        rel = p.relative_to(runs).parts
        allowed = bool(rel) and studio.jobs.owns(rel[0], owner)
    else:
        allowed = True
    if not allowed:
        raise ValueError(f"No LoRA {Path(path).name!r}.")
    return path


ROLE = {"sd15": "sd", "sdxl": "sdxl"}
DEMO_LABEL = "CPU demo: tiny random model (noise images; shows the loop, not quality)"


def checkpoints_dir(studio: Any) -> Path:
    """Where a user drops base models, as in ComfyUI (``models/checkpoints``) or A1111
    (``models/Stable-diffusion``): single ``.safetensors`` files or diffusers folders."""
    from studio.hub import models_dir

    return models_dir(studio.settings.home) / "checkpoints"


def demo_dir(studio: Any) -> Path:
    from studio.hub import models_dir

    return models_dir(studio.settings.home) / "demo" / "tiny-sd15-random"


def _folder_arch(folder: Path) -> str | None:
    """sd15 / sdxl of a diffusers folder (its model_index.json), None if it is not one."""
    import json

    try:
        cls = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, ValueError, AttributeError):
        return None
    return "sdxl" if "XL" in cls else "sd15" if "StableDiffusion" in cls else None


def local_checkpoints(studio: Any, arch: str) -> list[tuple[str, str]]:
    """(label, path) of the base models in `checkpoints_dir` for `arch`: single-file
    checkpoints whose header says `arch`, and diffusers folders (model_index.json)."""
    root = checkpoints_dir(studio)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for p in sorted(root.iterdir(), key=lambda x: x.name.lower()):
        if p.is_file() and p.suffix.lower() == ".safetensors":
            try:
                found = single_file.detect_arch(p)
            except (ValueError, OSError):
                continue  # not a checkpoint of a known architecture (e.g. a LoRA)
            if found == arch:
                out.append((f"{p.name} (file in models/checkpoints)", str(p)))
        elif p.is_dir() and _folder_arch(p) == arch:
            out.append((f"{p.name} (folder in models/checkpoints)", str(p)))
    return out


def _catalog_options(studio: Any, arch: str) -> list[Any]:
    """The Models tab's options for this architecture's role, the chosen one first."""
    from tabs.models import service as models

    role = ROLE[arch]
    chosen = models.option_for_choice(studio, role, studio.choices.get(role))
    opts = [chosen] if chosen is not None else []
    for o in models.catalog(studio).get(role, []):
        if all(o.source != c.source for c in opts):
            opts.append(o)
    return opts


def _on_disk(studio: Any, opt: Any) -> bool:
    from tabs.models import service as models

    try:
        return bool(models.on_disk(studio, opt))
    except Exception:  # a bad saved choice never breaks the page
        return False


def base_options(studio: Any, arch: str) -> list[tuple[str, str]]:
    """(label, value) of every base model for `arch` that is on disk: the Models tab's
    downloaded ones, the models folder's checkpoints, and the CPU demo model once built."""
    out = [(f"{o.title} ({o.source}, downloaded)", o.source)
           for o in _catalog_options(studio, arch) if _on_disk(studio, o)]
    out += local_checkpoints(studio, arch)
    if arch == "sd15" and (demo_dir(studio) / "model_index.json").exists():
        out.append((DEMO_LABEL, str(demo_dir(studio))))
    return out


def base_choices(studio: Any, arch: str) -> list[str]:
    """The values of `base_options` (what the dropdowns hold)."""
    return [v for _, v in base_options(studio, arch)]


def base_note(studio: Any, arch: str) -> str:
    """What the page says under a base-model dropdown: which models are missing and how to get
    one (the Models tab, the models folder, the CPU demo), with the profile's own note."""
    from studio.config import format_bytes

    role = ROLE[arch]
    lines = []
    choice = studio.choices.get(role)
    if choice is not None and choice.note:
        lines.append(f"{choice.title}: {choice.note}.")
    missing = [o for o in _catalog_options(studio, arch) if o.download and
               not _on_disk(studio, o)]
    for o in missing[:2]:
        size = f", about {format_bytes(o.size_hint)}" if o.size_hint else ""
        lines.append(f"{o.title} ({o.source}{size}) is not on disk: open the **Models** tab "
                     "and click Download.")
    if not base_options(studio, arch):
        lines.insert(0, "**No base model on disk yet.**")
        lines.append(f"Or put a `.safetensors` checkpoint or a diffusers folder in "
                     f"`{checkpoints_dir(studio)}` (as ComfyUI's models/checkpoints).")
        if arch == "sd15":
            lines.append("Or click **Set up the CPU demo** on the Train tab to try the whole "
                         "train → generate loop with a tiny random model.")
    return "  \n".join(lines)


def resolve_base(studio: Any, text: str, arch: str) -> str:
    """What to load for a base model the user chose: local paths as they are, a hub id from
    its folder on disk; a hub id that is not on disk raises `NotOnDisk` at once, saying to
    download it on the Models tab (no request or job ever starts that download itself)."""
    from studio.config import format_bytes
    from studio.hub import require_local

    hint = next((o.size_hint for o in _catalog_options(studio, arch)
                 if o.source == text.strip() and o.size_hint), 0)
    return require_local(studio, text.strip(), "The base model",
                         format_bytes(hint) if hint else "")


def demo_setup(studio: Any, owner: Any = ALL) -> PreparedDataset:
    """The CPU demo: the tiny random SD 1.5 (built once) and four generated 48 px images
    prepared at 32 px, so train -> generate runs on a CPU in minutes."""
    import numpy as np
    from PIL import Image, ImageDraw

    from tabs.sd.tiny import make_tiny_sd15

    base = demo_dir(studio)
    if not (base / "model_index.json").exists():
        base.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=base.parent, prefix=".build-"))
        make_tiny_sd15(tmp)  # built aside, then moved: a half-built folder is never listed
        if base.exists() and not (base / "model_index.json").exists():
            shutil.rmtree(base, ignore_errors=True)  # left over from an interrupted build
        try:
            tmp.rename(base)
        except OSError:  # another request built it at the same time: keep that one
            shutil.rmtree(tmp, ignore_errors=True)
    src = Path(tempfile.mkdtemp(dir=prepared_root(studio, owner), prefix=".demo-src-"))
    files = []
    for i, (bg, fg) in enumerate([((240, 220, 180), (200, 40, 40)),
                                  ((180, 210, 240), (30, 90, 200)),
                                  ((200, 240, 200), (20, 140, 60)),
                                  ((240, 240, 240), (90, 40, 160))]):
        im = Image.fromarray(np.full((48, 48, 3), bg, np.uint8))
        ImageDraw.Draw(im).ellipse((8 + 2 * i, 8, 40, 40 - 2 * i), fill=fg)
        path = src / f"demo_{i}.png"
        im.save(path)
        files.append(path)
    out = Path(tempfile.mkdtemp(dir=prepared_root(studio, owner),
                                prefix=time.strftime("%Y%m%d-%H%M%S-demo-")))
    ds = prepare_dataset(files, out, size=32, instance_prompt="a drawing of sks ball",
                         min_side=16)
    shutil.rmtree(src, ignore_errors=True)
    return ds


def sample_images(studio: Any, run_id: str | None, owner: Any = ALL) -> list[tuple[str, str]]:
    """(path, caption) of a run's sample images (a run `owner` may see), newest last."""
    if not run_id:
        return []
    try:
        v = studio.jobs.view(run_id, log_lines=0, owner=owner)
    except KeyError:
        return []
    return [(a["path"], a["label"]) for a in v.artifacts if a["kind"] == "image"]
