"""Plain formatting of runs, ledgers and queues for the UI (no Gradio, tested on its own)."""

from __future__ import annotations

import html
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from studio.config import format_bytes
from studio.jobs import ALL, RunView

STATUS_ICON = {"queued": "⏳", "running": "▶️", "succeeded": "✅", "failed": "❌",
               "cancelled": "⏹️", "interrupted": "⚠️"}


def format_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def run_label(v: RunView) -> str:
    when = time.strftime("%m-%d %H:%M", time.localtime(v.created))
    return f"{STATUS_ICON.get(v.status, '')} {v.title} · {when} · {v.status}"


def run_choices(views: list[RunView]) -> list[tuple[str, str]]:
    return [(run_label(v), v.id) for v in views]


def run_markdown(v: RunView) -> str:
    lines = [f"**{v.title}** — {STATUS_ICON.get(v.status, '')} {v.status}"
             + (f" (attempt {v.attempts})" if v.attempts > 1 else "")]
    if v.status == "running" and v.eta_seconds is not None:
        lines.append(f"ETA {format_seconds(v.eta_seconds)}")
    if v.started and (v.ended or v.status == "running"):
        lines.append(f"elapsed {format_seconds((v.ended or time.time()) - v.started)}")
    if v.note:
        lines.append(f"_{v.note}_")
    if v.error:
        lines.append(f"**Error:** `{v.error}`")
    lines.append(f"folder: `{v.run_dir}`")
    return "  \n".join(lines)


def progress_html(v: RunView | None) -> str:
    if v is None:
        return "<div class='studio-progress'></div>"
    frac = v.fraction
    pct = 100.0 * frac if frac is not None else (100.0 if v.status == "succeeded" else 0.0)
    text = html.escape(v.message or "")
    done = f"{v.done:g}/{v.total:g}" if v.total else ""
    return (
        "<div class='studio-progress'>"
        f"<progress max='100' value='{pct:.1f}' style='width:100%'></progress>"
        f"<div>{pct:.0f}% {done} {text}</div></div>"
    )


def metrics_frame(v: RunView, keys: tuple[str, ...]) -> Any:
    """Long-format frame (step, value, series) for a LinePlot of the chosen metric keys."""
    import pandas as pd

    rows = []
    for m in v.metrics:
        for k in keys:
            if k in m:
                rows.append({"step": m["step"], "value": m[k], "series": k})
    if not rows:
        return None
    return pd.DataFrame(rows)


KEY_CHARS = 28  # a ledger key longer than this is shortened in the middle (the table fits)


def short_key(key: str, n: int = KEY_CHARS) -> str:
    """`key` in at most `n` characters, its start and its end kept (keys end in a digest)."""
    if len(key) <= n:
        return key
    head = (n - 1) // 2
    return key[:head] + "…" + key[len(key) - (n - 1 - head):]


def ledger_size(r: Any) -> str:
    """A row's size. A model outside torch (CTranslate2, ONNX Runtime) cannot be measured
    where the device does not count foreign memory (a CPU): its estimate, or say so, never a
    measured-looking "0 B"."""
    if r.size:
        return format_bytes(r.size)
    if r.state == "reserved":
        return format_bytes(0)
    est = int(getattr(r, "estimate", 0) or 0)
    return f"≈ {format_bytes(est)} (estimate)" if est else "not measured"


def ledger_rows(rows: list[Any], now_monotonic: float | None = None) -> list[list[str]]:
    now = now_monotonic if now_monotonic is not None else time.monotonic()
    out = []
    for r in rows:
        if r.state == "reserved":
            used = "job"
        else:
            used = f"{format_seconds(now - r.last_used)} ago"
        out.append([short_key(r.key), r.title, r.state, ledger_size(r),
                    "pinned (in use)" if r.pinned else "idle", used])
    return out


def ledger_label(device: str) -> str:
    """The ledger's name: VRAM only where there is a GPU."""
    return "VRAM ledger" if device == "cuda" else "Memory (CPU RAM: no GPU)"


def queue_note(v: RunView, runs: list[RunView]) -> str:
    """Why a run waits (one job runs at a time), or its own note."""
    if v.note or v.status != "queued":
        return v.note
    ahead = [r for r in runs if r.status == "running" and r.id != v.id]
    if ahead:  # another session's run (`seen_by`) has no id and names itself
        what = f"the {ahead[0].title} run" if ahead[0].id else ahead[0].title
        return f"waiting for {what} to finish (one job at a time)"
    return "starting"


def seen_by(runs: list[RunView], owner: Any = ALL) -> list[RunView]:
    """The queue as `owner` may see it: its own and shared runs whole; another session's run
    keeps its place, kind, status, progress and note, but not its id, title or anything of its
    folder ("another session's <kind> run")."""
    if owner is ALL:
        return runs
    return [v if v.owner in (None, owner) else
            replace(v, id="", title=f"another session's {v.kind} run", error="", run_dir="",
                    log_tail="", metrics=[], artifacts=[])
            for v in runs]


def queue_rows(runs: list[RunView], owner: Any = ALL) -> list[list[str]]:
    runs = seen_by(runs, owner)
    return [[v.id, v.title, v.status, f"{100 * (v.fraction or 0):.0f}%",
             format_seconds(v.eta_seconds), queue_note(v, runs)] for v in runs]


# ----- the job panel's Outputs: files only ------------------------------------------------------
# Already-compressed formats are stored, not deflated again (a zip of weights is made in seconds).
_STORED = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".zip", ".png",
           ".jpg", ".jpeg", ".webp", ".npz")


def _tree_signature(folder: Path) -> tuple[int, int, int]:
    """(files, total bytes, newest mtime_ns) of everything under `folder`."""
    n = size = newest = 0
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            n, size, newest = n + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return n, size, newest


def folder_zip(folder: Path, cache_dir: Path, name: str = "") -> Path | None:
    """A zip of `folder` in `cache_dir`, made once and made again only when the folder's
    contents change (the panel asks on every refresh). None for an empty folder. `name`: the
    zip's file name without ".zip" (default: the folder's name)."""
    import json
    import os
    import zipfile

    sig = list(_tree_signature(folder))
    if sig[0] == 0:
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = name or folder.name
    out = cache_dir / f"{name}.zip"
    stamp = cache_dir / f".{name}.zip.json"
    try:
        if out.is_file() and json.loads(stamp.read_text()) == sig:
            return out
    except (OSError, ValueError):
        pass
    import threading

    tmp = cache_dir / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"  # two viewers at once
    with zipfile.ZipFile(tmp, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.is_symlink():
                kind = zipfile.ZIP_STORED if p.suffix.lower() in _STORED else zipfile.ZIP_DEFLATED
                zf.write(p, Path(folder.name) / p.relative_to(folder), compress_type=kind)
    os.replace(tmp, out)
    stamp.write_text(json.dumps(sig))
    return out


def output_files(v: RunView) -> list[str] | None:
    """What the Outputs box offers for a run: its artifacts (not checkpoints) as files, each
    once; a folder (an adapter, a saved model) as one zip made under ``run_dir/downloads``.
    Paths that do not exist (yet, or any more) are left out. None when there is nothing."""
    out: list[str] = []
    for a in v.artifacts:
        if a.get("kind") == "checkpoint":
            continue
        p = Path(a["path"])
        if p.is_dir():
            try:  # adapter/ -> adapter.zip, export/merged/ -> export-merged.zip
                name = "-".join(p.relative_to(v.run_dir).parts)
            except ValueError:
                name = p.name
            z = folder_zip(p, Path(v.run_dir) / "downloads", name)
            path = str(z) if z is not None else None
        elif p.is_file():
            path = str(p)
        else:
            path = None
        if path and path not in out:
            out.append(path)
    return out or None
