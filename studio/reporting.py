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


class CancelledBeforeStart(BaseException):
    """Raised by the SIGTERM handler when a cancel arrives before the job's loop started."""


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
        self._acknowledged = False
        self._polled = False  # the job has looked at should_stop(): it handles stops itself
        if install_signal:
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, *_: Any) -> None:
        """A cancel. Once the job polls `should_stop()` it stops at its next check and saves;
        before that (imports, loading a model) there is nothing to save, so the worker stops
        at once instead of making the user wait for the loop to start."""
        self._stop.set()
        if not self._polled:
            raise CancelledBeforeStart()

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
        self._polled = True
        if self._stop.is_set():
            if not self._acknowledged:
                self.stopping()
            return True
        return False

    def stopping(self, grace_s: float | None = None) -> None:
        """Acknowledge a cancel: the job (or its framework hook) has taken the stop and is now
        finishing (saving, a last validation). The studio's grace period counts from here;
        a framework whose finish takes longer asks for more with `grace_s`."""
        self._acknowledged = True
        extra = {"grace_s": float(grace_s)} if grace_s is not None else {}
        self._emit({"type": "stopping", **extra})

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


class EventTail:
    """A run's events read incrementally: each `update()` parses only the bytes appended since
    the last one (a status tick must not re-read thousands of events per run). Keeps what the
    UI shows: last progress, metrics by step, artifacts, checkpoints, status and stop events.

    Metrics are kept per step, and a resumed attempt's first event drops the steps after its
    checkpoint, so steps that an attempt replays after a resume appear once, not twice."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "events.jsonl"
        self.offset = 0
        self.size = -1
        self.last_progress: dict[str, Any] | None = None
        self.first_progress: dict[str, Any] | None = None  # of this attempt (for the ETA)
        self.metrics: dict[int, dict[str, float]] = {}
        self.artifacts: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.stopping: dict[str, Any] | None = None
        self.attempt_start = 0.0
        self.resume_step = 0  # of this attempt

    def update(self) -> bool:
        """Read what was appended; True when anything new was read."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return False
        if size < self.offset:  # rewritten: start over
            self.__init__(self.path.parent)
        if size == self.offset:
            return False
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        end = data.rfind(b"\n")
        if end < 0:
            return False  # only half a line so far (a writer mid-line)
        self.offset += end + 1
        for line in data[:end].split(b"\n"):
            line = line.strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # a torn line from a killed process
            self._add(ev)
        return True

    def _add(self, ev: dict[str, Any]) -> None:
        t = ev.get("type")
        if t == "progress":
            self.last_progress = ev
            first = self.first_progress
            # The ETA's starting point: the last event before the work moved (loading time
            # does not count), and never one from before a resumed attempt's checkpoint (the
            # jump from 0 to the resumed step is not work done in this attempt).
            if first is None or ev.get("done") == first.get("done") or \
                    (ev.get("done") or 0) < self.resume_step or \
                    (first.get("done") or 0) < self.resume_step:
                self.first_progress = ev
        elif t == "metrics":
            step = int(ev.get("step", 0))
            row = self.metrics.setdefault(step, {"step": step})
            row.update({k: v for k, v in ev.items() if k not in ("t", "type", "step")})
        elif t == "artifact":
            self.artifacts.append(ev)
        elif t == "status":
            self.statuses.append(ev)
            if ev.get("state") == "running":  # a new attempt
                self.attempt_start = float(ev.get("t", 0))
                self.first_progress = None
                self.stopping = None
                resume = ev.get("resume_step")
                self.resume_step = int(resume or 0)
                if resume is not None:
                    for step in [s for s in self.metrics if s > int(resume)]:
                        del self.metrics[step]
        elif t == "stopping":
            self.stopping = ev

    def final_status(self, since: float = 0.0) -> dict[str, Any] | None:
        """The last final status event (succeeded/failed/cancelled) at or after `since`."""
        for ev in reversed(self.statuses):
            if ev.get("state") in ("succeeded", "failed", "cancelled"):
                return ev if float(ev.get("t", 0)) >= since else None
        return None
