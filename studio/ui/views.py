"""Plain formatting of runs, ledgers and queues for the UI (no Gradio, tested on its own)."""

from __future__ import annotations

import html
import time
from typing import Any

from studio.config import format_bytes
from studio.jobs import RunView

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


def ledger_rows(rows: list[Any], now_monotonic: float | None = None) -> list[list[str]]:
    now = now_monotonic if now_monotonic is not None else time.monotonic()
    out = []
    for r in rows:
        if r.state == "reserved":
            used = "job"
        else:
            used = f"{format_seconds(now - r.last_used)} ago"
        out.append([r.key, r.title, r.state, format_bytes(r.size),
                    "pinned (in use)" if r.pinned else "idle", used])
    return out


def queue_rows(runs: list[RunView]) -> list[list[str]]:
    return [[v.id, v.title, v.status, f"{100 * (v.fraction or 0):.0f}%",
             format_seconds(v.eta_seconds), v.note] for v in runs]
