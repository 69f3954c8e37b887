"""What the Vision tab's Adapt section does, without Gradio: check the data zip, estimate the
memory, queue the job, read its before/after samples, export the adapter and open it in the
chat (base + adapter through the VLM engine)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.jobs import ALL
from tabs.vlm import dataset as data
from tabs.vlm.config import VLMAdaptConfig

KIND = "vlm"
ENTRY = "tabs.vlm.train:run"
UPLOAD_LIMIT = 4 * 1024**3


def stage(studio: Any, path: str | None) -> str:
    """Copy an uploaded zip under the studio home (content-named) so the job can read it."""
    from studio.safety import stage_upload

    if not path:
        return ""
    return str(stage_upload(path, Path(studio.settings.uploads_dir) / "vlm", label="Data",
                            max_bytes=UPLOAD_LIMIT))


def work_dir(studio: Any) -> Path:
    return Path(studio.settings.home) / "vlm" / "datasets"


@dataclass
class Validation:
    """What "Check data" shows: the report, a preview and the token-length histogram."""

    pairs: data.PairSet
    preview: str
    histogram: Any  # pandas DataFrame for gr.BarPlot
    too_long: int
    max_len: int

    def markdown(self) -> str:
        text = self.pairs.report()
        return text + f"\n**Longer than {self.max_len} tokens (would be skipped):** " \
                      f"{self.too_long}"


def validate(studio: Any, zip_path: str, base_model: str, max_len: int,
             sample: int = 200) -> Validation:
    """Read the zip (reasons per line) and measure the first pairs through the base's
    processor (image tokens included) against the max length."""
    from transformers import AutoProcessor

    from studio.llm import LLMError
    from studio.llm.engine import ModelSource, resolve_source
    from tabs.qlora.dataset import length_histogram

    ps = data.load_pairs(zip_path, work_dir(studio))
    try:
        where, _ = resolve_source(ModelSource(base_model))
        proc = AutoProcessor.from_pretrained(where)
    except LLMError as e:
        raise ValueError(str(e)) from None
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot load the processor of {base_model}: {e}") from e
    lengths = [data.token_length(proc, p) for p in ps.pairs[:sample]]
    hist, over = length_histogram(lengths, max_len)
    lines = []
    for p in ps.pairs[:3]:
        lines.append(f"[line {p.line}] pictures: {', '.join(i.name for i in p.images)}")
        lines += [f"{t['role']}: {t['content']}" for t in p.messages]
        lines.append("")
    return Validation(pairs=ps, preview="\n".join(lines), histogram=hist, too_long=over,
                      max_len=max_len)


def estimate(studio: Any, cfg: VLMAdaptConfig) -> Any:
    from tabs.vlm.estimate import adapt_estimate, load_vlm_arch

    cuda = getattr(studio.probe, "device", "cpu") == "cuda"
    return adapt_estimate(load_vlm_arch(cfg.base_model), cfg, cuda, studio.models.budget)


def submit(studio: Any, cfg: VLMAdaptConfig, owner: Any = ALL) -> str:
    """Check data and memory up front (errors now, not minutes into a job), then queue the run
    for `owner` (``studio.sessions.owner_of``)."""
    cfg.validate()
    if not cfg.train_file:
        raise ValueError("upload the data zip first")
    ps = data.load_pairs(cfg.train_file, work_dir(studio))
    data.require_clean(ps, cfg.skip_bad_records)
    cfg.dataset_hash = data.content_hash(ps)
    vram = 0
    if getattr(studio.probe, "device", "cpu") == "cuda":
        est = estimate(studio, cfg)
        if not est.fits:
            raise ValueError("this will not fit: " + est.describe())
        vram = est.total
    title = f"VLM adapt {Path(cfg.base_model).name} r{cfg.lora_r} on {Path(cfg.train_file).name}"
    return studio.jobs.submit(kind=KIND, entry=ENTRY, config=cfg.to_dict(), title=title,
                              vram_bytes=vram, dataset_hash=cfg.dataset_hash, seed=cfg.seed,
                              owner=owner)


def finished_runs(studio: Any, owner: Any = ALL) -> list[str]:
    """Run ids of `owner` (and shared ones) with an adapter."""
    return [v.id for v in studio.jobs.list_runs(KIND, owner=owner)
            if (Path(v.run_dir) / "adapter" / "adapter_config.json").is_file()]


def run_paths(studio: Any, run_id: str) -> tuple[Path, VLMAdaptConfig]:
    if not run_id:
        raise ValueError("pick a run first")
    try:
        run_dir = studio.jobs.run_dir(run_id)
    except (KeyError, ValueError):
        raise ValueError(f"no run {run_id!r}") from None
    if not (run_dir / "adapter" / "adapter_config.json").is_file():
        raise ValueError(f"run {run_id} has no adapter yet")
    cfg = VLMAdaptConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    return run_dir, cfg


def samples_table(studio: Any, run_id: str) -> tuple[list[list[str]], dict[str, Any]]:
    """Rows (picture, prompt, expected, base, adapter) and the run's results."""
    run_dir, _ = run_paths(studio, run_id)
    if not (run_dir / "samples.json").is_file():
        raise ValueError(f"run {run_id} stopped before its evaluation; resume it to finish")
    samples = json.loads((run_dir / "samples.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    rows = [[s["picture"], s["prompt"], s["expected"], s["base"], s["adapter"]]
            for s in samples]
    return rows, results


def export(studio: Any, run_id: str) -> Path:
    """Copy the adapter (LoRA safetensors, the projector when trained, processor, run card)
    to exports/vlm/<run>."""
    run_dir, _ = run_paths(studio, run_id)
    dest = Path(studio.settings.exports_dir) / "vlm" / run_id
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(run_dir / "adapter", dest / "adapter")
    return dest


def chat_target(studio: Any, run_id: str) -> tuple[str, str]:
    """(base model, adapter folder) that the tab's chat uses to talk to a trained run."""
    run_dir, cfg = run_paths(studio, run_id)
    return cfg.base_model, str(run_dir / "adapter")


def adapter_folder(studio: Any, path: str, owner: Any = ALL) -> str | None:
    """An adapter path from the chat's field, accepted only inside the studio home (runs,
    exports): loading one runs its files, so a stranger cannot point it elsewhere; one of
    another session's runs (or its export) is answered as a path that does not exist."""
    from studio.safety import path_under

    text = (path or "").strip()
    if not text:
        return None
    p = path_under(studio.settings.home, text, label="Adapter", must_exist=True)
    try:
        studio.jobs.check_path(p, owner, studio.settings.exports_dir)
    except KeyError:
        raise ValueError(f"Adapter: {p} does not exist") from None
    if not (p / "adapter_config.json").is_file():
        raise ValueError(f"Adapter: {p} is not a LoRA adapter folder (no adapter_config.json)")
    return str(p)
