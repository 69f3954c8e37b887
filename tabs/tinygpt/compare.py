"""The comparison table across Tiny GPT runs: what changing the positional scheme, the size or
the context did to validation perplexity, to length extrapolation (perplexity at twice the
training context) and to training speed.

Finished runs are read from their ``results.json``; runs still going or stopped early show
their latest metrics, so the table fills in as they train.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from tabs.tinygpt.metrics import perplexity
from tabs.tinygpt.train import RESULTS

KIND = "tinygpt"
COLUMNS = ["run", "status", "pos", "params_M", "layers", "width", "context", "tokenizer",
           "steps", "val_loss", "val_ppl", "measured", "val_ppl_2x", "ppl_2x_ratio",
           "train_tokens_per_s", "device", "id"]
# A finished run is scored once over every validation window (results.json); val_loss is then
# the log of that same perplexity. A run still going shows its latest periodic estimate (random
# validation batches), named as such, never mixed with the final figure.
FINAL = "final: every validation window"


def run_row(view: Any) -> dict[str, Any]:
    """One table row from a `studio.jobs.RunView` of a Tiny GPT run."""
    d = Path(view.run_dir)
    cfg = _read_json(d / "config.json")
    res = _read_json(d / RESULTS)
    last: dict[str, float] = {}
    for m in view.metrics:  # latest value of each metric
        last.update({k: v for k, v in m.items() if k != "step"})
        last["step"] = m.get("step", last.get("step", 0))
    if res.get("val_ppl"):
        val_ppl = res["val_ppl"]
        val_loss = math.log(val_ppl)
        measured = FINAL
    else:
        val_loss = last.get("val_loss")
        val_ppl = perplexity(val_loss) if val_loss is not None else None
        measured = f"step {int(last.get('step', 0))}: sampled batches" if val_loss else None
    ppl_2x = res.get("val_ppl_2x")
    return {
        "run": view.title, "status": view.status, "pos": cfg.get("pos"),
        "params_M": round(res["params"] / 1e6, 3) if "params" in res else None,
        "layers": cfg.get("n_layer"), "width": cfg.get("n_embd"),
        "context": cfg.get("block_size"), "tokenizer": cfg.get("tokenizer"),
        "steps": int(res.get("step", last.get("step", 0))),
        "val_loss": _round(val_loss), "val_ppl": _round(val_ppl), "measured": measured,
        "val_ppl_2x": _round(ppl_2x),
        "ppl_2x_ratio": _round(ppl_2x / val_ppl) if ppl_2x and val_ppl else None,
        "train_tokens_per_s": _round(res.get("tokens_per_s", last.get("tokens_per_s")), 0),
        "device": res.get("device"), "id": view.id,
    }


def compare_runs(views: list[Any]) -> pd.DataFrame:
    """The table, one row per Tiny GPT run, best validation perplexity first."""
    rows = [run_row(v) for v in views if v.kind == KIND]
    df = pd.DataFrame(rows, columns=COLUMNS)
    if df.empty:
        return df
    return df.sort_values("val_ppl", na_position="last", kind="stable").reset_index(drop=True)


def chart_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Long format for a bar chart: one bar per run and measure (perplexity at 1x and 2x)."""
    rows = []
    for _, r in table.iterrows():
        label = f"{r['run']} ({r['id'][-6:]})"
        for measure, col in (("val ppl @ context", "val_ppl"), ("val ppl @ 2x context",
                                                                "val_ppl_2x")):
            if pd.notna(r[col]):
                rows.append({"run": label, "measure": measure, "run · measure":
                             f"{label} · {measure}", "perplexity": float(r[col])})
    return pd.DataFrame(rows, columns=["run", "measure", "run · measure", "perplexity"])


def loss_curves(views: list[Any], metric: str = "val_loss") -> pd.DataFrame:
    """Long format for one line per run: (step, value, run) of `metric` over training, for
    overlaying the loss curves of several runs on one plot."""
    rows = []
    for v in views:
        if v.kind != KIND:
            continue
        label = f"{v.title} ({v.id[-6:]})"
        for m in v.metrics:
            if metric in m and m[metric] is not None:
                rows.append({"step": int(m["step"]), "value": float(m[metric]), "run": label})
    return pd.DataFrame(rows, columns=["step", "value", "run"])


def _round(x: float | None, digits: int = 3) -> float | None:
    if x is None or pd.isna(x):
        return None
    return round(float(x), digits)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
