"""Reporter: what a job's `run(config, report)` uses to tell the studio how it is doing.

Every call appends one JSON line to ``run_dir/events.jsonl``; the studio reads that file, so a
job needs no knowledge of Gradio, sockets or the parent process. ``should_stop()`` turns True
after a cancel (SIGTERM); the job then saves what it has and returns.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any


class Reporter:
    """Writes progress, metrics, log lines and artifacts of one run to its events file."""

    def __init__(self, run_dir: Path, resume: bool = False, install_signal: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.resume = resume  # True when this process continues an earlier attempt
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._events = open(self.run_dir / "events.jsonl", "a", buffering=1, encoding="utf-8")
        self._log = open(self.run_dir / "log.txt", "a", buffering=1, encoding="utf-8")
        if install_signal:
            signal.signal(signal.SIGTERM, lambda *_: self.request_stop())

    # ----- what a job calls -------------------------------------------------------------------
    def progress(self, done: float, total: float | None = None, message: str = "") -> None:
        """Work done so far out of `total` (steps, epochs, files). The studio computes ETA."""
        self._emit({"type": "progress", "done": done, "total": total, "message": message})

    def metrics(self, step: int, **values: float) -> None:
        """Numbers to plot against `step`, e.g. ``metrics(10, train_loss=2.1, lr=3e-4)``."""
        clean = {k: float(v) for k, v in values.items() if v is not None}
        self._emit({"type": "metrics", "step": int(step), **clean})

    def log(self, message: str) -> None:
        with self._lock:
            self._log.write(time.strftime("%H:%M:%S ") + message.rstrip() + "\n")

    def artifact(self, path: str | Path, kind: str = "file", label: str = "") -> None:
        """Register an output (checkpoint, adapter, plot, sample image) for the UI."""
        rel = os.path.relpath(Path(path), self.run_dir)
        self._emit({"type": "artifact", "path": rel, "kind": kind, "label": label})

    def checkpoint(self, path: str | Path, step: int) -> None:
        """Mark a resumable checkpoint; `last_checkpoint()` returns the newest."""
        self._emit({"type": "checkpoint", "path": os.path.relpath(Path(path), self.run_dir),
                    "step": int(step)})

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()

    def last_checkpoint(self) -> tuple[Path, int] | None:
        """The newest checkpoint an earlier attempt of this run saved, if it still exists."""
        best = None
        for ev in read_events(self.run_dir):
            if ev.get("type") == "checkpoint":
                p = self.run_dir / ev["path"]
                if p.exists():
                    best = (p, int(ev["step"]))
        return best

    # ----- used by the worker ---------------------------------------------------------------
    def status(self, state: str, **extra: Any) -> None:
        self._emit({"type": "status", "state": state, **extra})

    def _emit(self, event: dict[str, Any]) -> None:
        event = {"t": time.time(), **event}
        line = json.dumps(event, default=str)
        with self._lock:
            self._events.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._events.close()
            self._log.close()


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """All events of a run; a half-written last line (a killed process) is ignored."""
    path = Path(run_dir) / "events.jsonl"
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
