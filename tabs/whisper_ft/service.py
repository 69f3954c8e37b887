"""What the Whisper fine-tune tab's buttons do, without Gradio: prepare a dataset (uploads or a
Transcribe-tab transcript), queue the training job, read its before/after results, export, and
list tuned models for the Transcribe tab."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from studio.jobs import ALL
from tabs.whisper_ft.config import WhisperFTConfig
from tabs.whisper_ft.data import (
    DataError,
    DatasetSummary,
    load_pieces,
    load_summary,
    prepare_dataset,
)

KIND = "whisper_ft"
ENTRY = "tabs.whisper_ft.train:run"
DATASET_ID = re.compile(r"^wds-[0-9a-f]{12}$")
CPU_NOTE = ("No CUDA GPU here: training runs in fp32 on the CPU, fine for the tiny test model, "
            "slow for Whisper small (hours of audio need a GPU).")


def datasets_root(studio: Any) -> Path:
    return Path(studio.settings.uploads_dir) / "whisper_ft"


def dataset_folder(studio: Any, dataset_id: str) -> Path:
    """The folder of a prepared dataset; ids are checked, so no path can be smuggled in."""
    dataset_id = (dataset_id or "").strip()
    if not DATASET_ID.match(dataset_id):
        raise ValueError(f"{dataset_id!r} is not a dataset id (prepare data first; ids look "
                         "like wds-0123456789ab)")
    folder = datasets_root(studio) / dataset_id
    if not (folder / "manifest.jsonl").is_file():
        raise ValueError(f"no dataset {dataset_id}; prepare data first")
    return folder


def prepare(studio: Any, files: list[str | Path] = (), transcript_ids: list[str] = (),
            heldout_fraction: float = 0.1, seed: int = 0) -> DatasetSummary:
    """One dataset from uploaded files (zips, audio + transcripts, manifests) and transcripts
    saved by the Transcribe tab."""
    from studio.safety import extract_budget

    transcripts = [transcript_source(studio, t) for t in transcript_ids if t and t.strip()]
    return prepare_dataset(datasets_root(studio), [Path(f) for f in files if f], transcripts,
                           heldout_fraction=heldout_fraction, seed=seed,
                           extract_budget=extract_budget(studio.settings))


def transcript_source(studio: Any, transcript_id: str) -> tuple[Any, Path]:
    """A Transcribe-tab transcript (with the user's corrections) and its recording."""
    from tabs.whisper.playback import AUDIO_FILE
    from tabs.whisper.service import get_service

    svc = get_service(studio)
    t = svc.get(transcript_id.strip())  # ValueError with a message when unknown
    audio = svc.root / Path(transcript_id.strip()).name / AUDIO_FILE
    if not audio.is_file():
        raise DataError(f"transcript {transcript_id} has no saved recording to cut pieces from")
    return t, audio


def dataset_from_transcript(studio: Any, transcript_id: str,
                            heldout_fraction: float = 0.1) -> DatasetSummary:
    """The Transcribe tab's "Use as training data": each segment becomes a (audio, text) pair."""
    return prepare(studio, transcript_ids=[transcript_id], heldout_fraction=heldout_fraction)


def is_cuda(studio: Any) -> bool:
    return getattr(studio.probe, "device", "cpu") == "cuda"


def submit(studio: Any, cfg: WhisperFTConfig, owner: Any = ALL) -> str:
    """Check the dataset and the memory now (errors at once, not minutes into a job), queue
    the run for `owner` (``studio.sessions.owner_of``)."""
    from studio.jobs import hash_files
    from studio.safety import check_model_source
    from tabs.whisper_ft.train import plan_memory

    dataset_id = Path(cfg.dataset).name if "/" in cfg.dataset else cfg.dataset
    folder = dataset_folder(studio, dataset_id)
    cfg.dataset = str(folder)
    cfg.validate()
    cfg.base_model = check_model_source(cfg.base_model, label="Base model")
    pieces = load_pieces(folder)
    if not any(p.split == "train" for p in pieces):
        raise ValueError("the dataset has no training pieces")
    cfg.dataset_hash = hash_files([folder / "manifest.jsonl"])
    vram = 0
    if is_cuda(studio):
        budget = studio.models.budget
        cfg.memory_budget_gib = budget / 1024**3  # the job plans its memory inside it
        plan = plan_memory(cfg, "cuda", budget)
        vram = plan.estimate
        if vram > budget:
            raise ValueError(f"this will not fit: about {vram / 1024**3:.1f} GiB needed, "
                             f"{budget / 1024**3:.1f} GiB in the budget; lower the batch size "
                             "or use LoRA")
    title = (f"Whisper {cfg.resolved_method()} {Path(cfg.base_model).name} on {dataset_id} "
             f"({len(pieces)} pieces)")
    return studio.jobs.submit(kind=KIND, entry=ENTRY, config=cfg.to_dict(), title=title,
                              vram_bytes=vram, dataset_hash=cfg.dataset_hash, seed=cfg.seed,
                              owner=owner)


def finished_runs(studio: Any, owner: Any = ALL) -> list[str]:
    """Run ids of `owner` (and shared ones) with results."""
    return [v.id for v in studio.jobs.list_runs(KIND, owner=owner)
            if (Path(v.run_dir) / "results.json").is_file()]


def results(studio: Any, run_id: str) -> tuple[dict[str, Any], list[list[Any]]]:
    """(results.json, rows of the most-changed table: reference, before, after, WERs)."""
    if not run_id:
        raise ValueError("pick a run first")
    run_dir = studio.jobs.run_dir(run_id)
    if not (run_dir / "results.json").is_file():
        raise ValueError(f"run {run_id} has no results yet (still training, or stopped before "
                         "the end: resume it)")
    res = json.loads((run_dir / "results.json").read_text())
    changed = []
    if (run_dir / "changed.json").is_file():
        changed = [[r["reference"], r["before"], r["after"], r["wer_before"], r["wer_after"]]
                   for r in json.loads((run_dir / "changed.json").read_text())]
    return res, changed


def results_markdown(res: dict[str, Any]) -> str:
    lines = [f"**{res['method']}** fine-tune of `{res['base_model']}`, {res['step']} steps on "
             f"{res['device']} (loss {_num(res.get('first_loss'))} -> "
             f"{_num(res.get('train_loss'))})"]
    if "wer_before" in res:
        lines.append(f"**Held-out WER:** {res['wer_before']:.3f} (base) -> "
                     f"{res['wer_after']:.3f} (tuned), {res['heldout_pieces']} pieces")
        gb, ga = res["glossary_before"], res["glossary_after"]
        if gb.get("recall") is not None:
            lines.append(f"**Glossary recall:** {gb['recall']:.2f} -> {ga['recall']:.2f}")
            for term, after in ga["terms"].items():
                b = gb["terms"].get(term, {})
                if after["in_references"]:
                    lines.append(f"- {term}: {b.get('recalled', 0)}/{after['in_references']} "
                                 f"-> {after['recalled']}/{after['in_references']}")
            if ga["not_in_heldout"]:
                lines.append("- not in the held-out pieces (not measured): "
                             + ", ".join(ga["not_in_heldout"]))
    else:
        lines.append("No held-out pieces: no WER.")
    return "  \n".join(lines)


def _num(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "n/a"


def run_folders(run_dir: Path) -> dict[str, Path]:
    """The tuned model's folders that exist: transformers, ct2-float16, ct2-int8."""
    out = {}
    for name, sub in (("transformers", "model"), ("ct2-float16", "ct2-float16"),
                      ("ct2-int8", "ct2-int8")):
        p = Path(run_dir) / sub
        if (p / "config.json").is_file():
            out[name] = p
    return out


def export(studio: Any, run_id: str) -> Path:
    """exports/whisper_ft/<run>/: the merged transformers model and both CTranslate2
    conversions (made now if the run skipped them), each with its run card."""
    from tabs.whisper_ft.train import convert_ct2

    if not run_id:
        raise ValueError("pick a run first")
    run_dir = studio.jobs.run_dir(run_id)
    folders = run_folders(run_dir)
    if "transformers" not in folders:
        raise ValueError(f"run {run_id} has no tuned model yet")
    if "ct2-int8" not in folders or "ct2-float16" not in folders:
        for out in convert_ct2(folders["transformers"], run_dir).values():
            shutil.copy(folders["transformers"] / "RUN_CARD.md", out / "RUN_CARD.md")
            shutil.copy(folders["transformers"] / "run_card.json", out / "run_card.json")
        folders = run_folders(run_dir)
    dest = Path(studio.settings.exports_dir) / "whisper_ft" / run_id
    if dest.exists():
        shutil.rmtree(dest)
    for name, src in folders.items():
        shutil.copytree(src, dest / name)
    return dest


def tuned_models(studio: Any, owner: Any = ALL) -> list[tuple[str, str]]:
    """(label, folder) of every finished fine-tune of `owner` (and shared ones), in the format
    this machine's Transcribe engine runs best: CTranslate2 int8 on CPU, float16 where
    CTranslate2 has CUDA, else the transformers folder."""
    from tabs.whisper.engines import ctranslate2_cuda_problem

    cuda = is_cuda(studio)
    prefer = ["ct2-int8", "ct2-float16", "transformers"]
    if cuda:
        prefer = (["ct2-float16", "transformers"] if not ctranslate2_cuda_problem()
                  else ["transformers", "ct2-int8"])
    out = []
    for v in studio.jobs.list_runs(KIND, owner=owner):
        if v.status != "succeeded":
            continue
        folders = run_folders(Path(v.run_dir))
        pick = next((folders[k] for k in prefer if k in folders), None)
        if pick is None:
            continue
        wer = ""
        try:
            res = json.loads((Path(v.run_dir) / "results.json").read_text())
            if "wer_after" in res:
                wer = f", WER {res['wer_before']:.2f} -> {res['wer_after']:.2f}"
        except (OSError, ValueError):
            pass
        out.append((f"tuned {v.id} ({pick.name}{wer})", str(pick)))
    return out


def run_card(studio: Any, model: str, owner: Any = ALL) -> str:
    """The RUN_CARD.md of a tuned model in `owner`'s list, or '' for any other model (a typed
    path never reads a file)."""
    if model not in {path for _, path in tuned_models(studio, owner)}:
        return ""
    try:
        return (Path(model) / "RUN_CARD.md").read_text()
    except OSError:
        return ""


def summary_of(studio: Any, dataset_id: str) -> DatasetSummary:
    return load_summary(dataset_folder(studio, dataset_id))
