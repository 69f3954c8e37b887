"""JobManager: long work (training, big indexing) as child processes with state on disk.

Each run is a folder under ``runs/``: ``run.json`` (what and how it is doing), ``config.json``,
``versions.json``, ``events.jsonl`` (written by the job through `Reporter`), ``log.txt`` and the
artifacts. The job itself runs as ``python -m studio.worker RUN_DIR`` in its own process group,
so a cancel can always end it and a crash cannot take the studio down. One job runs at a time;
the rest wait in a queue. The state lives on disk, so a closed browser loses nothing and a
restarted studio lists every past run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from studio.reporting import read_events

log = logging.getLogger("studio.jobs")

FINAL = ("succeeded", "failed", "cancelled", "interrupted")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunView:
    """Everything the UI shows about one run."""

    id: str
    kind: str
    title: str
    status: str
    created: float
    started: float | None = None
    ended: float | None = None
    done: float = 0.0
    total: float | None = None
    message: str = ""
    eta_seconds: float | None = None
    metrics: list[dict[str, float]] = field(default_factory=list)
    artifacts: list[dict[str, str]] = field(default_factory=list)
    log_tail: str = ""
    error: str = ""
    note: str = ""  # why it waits, or how it ended
    attempts: int = 1
    run_dir: str = ""

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))

    @property
    def resumable(self) -> bool:
        return self.status in ("cancelled", "failed", "interrupted")


def hash_files(paths: Iterable[Path]) -> str:
    """A content hash of a dataset (sorted by path), recorded in the run folder."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        if p.is_file():
            h.update(p.name.encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def _is_our_worker(pid: int, run_dir: Path) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"studio.worker" in cmd and str(run_dir).encode() in cmd


class JobManager:
    """Queue, start, watch, cancel and resume jobs. One instance owns the runs folder."""

    def __init__(self, runs_dir: Path, models: Any = None, grace_seconds: float = 15.0,
                 poll_seconds: float = 0.5, python: str = sys.executable,
                 start_thread: bool = True):
        self.runs_dir = Path(runs_dir)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.models = models  # ModelManager, for VRAM reservations; None in some tests
        self.grace_seconds = grace_seconds
        self.poll_seconds = poll_seconds
        self.python = python
        self._lock = threading.RLock()
        self._procs: dict[str, subprocess.Popen] = {}
        self._reservations: dict[str, Any] = {}
        self._cancel_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._recover()
        self._thread = None
        if start_thread:
            self._thread = threading.Thread(target=self._loop, name="jobs", daemon=True)
            self._thread.start()

    # ----- run folder -----------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise KeyError(f"bad run id: {run_id!r}")
        return self.runs_dir / run_id

    def _meta(self, run_id: str) -> dict[str, Any]:
        path = self.run_dir(run_id) / "run.json"
        if not path.exists():
            raise KeyError(f"no such run: {run_id}")
        return json.loads(path.read_text())

    def _write_meta(self, run_id: str, meta: dict[str, Any]) -> None:
        path = self.run_dir(run_id) / "run.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1, default=str))
        os.replace(tmp, path)  # atomic: a reader never sees half a file

    def _update(self, run_id: str, **changes: Any) -> dict[str, Any]:
        with self._lock:
            meta = self._meta(run_id)
            meta.update(changes)
            self._write_meta(run_id, meta)
            return meta

    # ----- public API -----------------------------------------------------------------------
    def submit(self, kind: str, entry: str, config: dict[str, Any], title: str = "",
               vram_bytes: int = 0, dataset_hash: str | None = None,
               seed: int | None = None) -> str:
        """Queue a job. `entry` is ``"package.module:function"`` taking ``(config, report)``."""
        module, _, func = entry.partition(":")
        if not module or not func:
            raise ValueError(f"entry must look like 'package.module:function', not {entry!r}")
        run_id = time.strftime("%Y%m%d-%H%M%S-") + f"{kind}-" + uuid.uuid4().hex[:6]
        d = self.run_dir(run_id)
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(config, indent=1, default=str))
        meta = {
            "id": run_id, "kind": kind, "title": title or kind, "entry": entry,
            "status": "queued", "created": time.time(), "vram_bytes": int(vram_bytes),
            "dataset_hash": dataset_hash, "seed": seed, "attempts": 1, "note": "",
        }
        with self._lock:
            self._write_meta(run_id, meta)
        self._tick()
        return run_id

    def cancel(self, run_id: str) -> str:
        """Queued: dropped at once. Running: asked to stop (it saves what it has), then killed
        with its whole process group if it is still alive after the grace period."""
        with self._lock:
            meta = self._meta(run_id)
            if meta["status"] == "queued":
                self._update(run_id, status="cancelled", ended=time.time(),
                             note="cancelled before it started")
                return "cancelled"
            if meta["status"] != "running":
                return meta["status"]
            pid = meta.get("pid")
            self._cancel_at.setdefault(run_id, time.monotonic())
            self._update(run_id, cancel_requested=True, note="stopping: saving what exists")
            self._signal(pid, signal.SIGTERM)
            return "stopping"

    def resume(self, run_id: str) -> str:
        """Queue a cancelled, failed or interrupted run again; it continues from its last
        checkpoint (the job reads it with ``report.last_checkpoint()``)."""
        with self._lock:
            meta = self._meta(run_id)
            if meta["status"] not in ("cancelled", "failed", "interrupted"):
                raise ValueError(f"run {run_id} is {meta['status']}; only a cancelled, failed or "
                                 "interrupted run can be resumed")
            self._update(run_id, status="queued", attempts=meta.get("attempts", 1) + 1,
                         cancel_requested=False, note="queued to resume", error="", ended=None)
        self._tick()
        return run_id

    def view(self, run_id: str, log_lines: int = 40) -> RunView:
        meta = self._meta(run_id)
        d = self.run_dir(run_id)
        v = RunView(id=run_id, kind=meta["kind"], title=meta.get("title", meta["kind"]),
                    status=meta["status"], created=meta["created"], started=meta.get("started"),
                    ended=meta.get("ended"), error=meta.get("error", ""),
                    note=meta.get("note", ""), attempts=meta.get("attempts", 1), run_dir=str(d))
        attempt_start = meta.get("started") or 0
        first = None
        for ev in read_events(d):
            t = ev.get("type")
            if t == "progress":
                v.done, v.total, v.message = ev["done"], ev.get("total"), ev.get("message", "")
                if ev["t"] >= attempt_start and first is None:
                    first = (ev["t"], ev["done"])
                last = (ev["t"], ev["done"])
            elif t == "metrics":
                v.metrics.append({k: val for k, val in ev.items() if k not in ("t", "type")})
            elif t == "artifact":
                v.artifacts.append({"path": str(d / ev["path"]), "kind": ev.get("kind", "file"),
                                    "label": ev.get("label", "")})
        if v.status == "running" and first and v.total:
            (t0, d0), (t1, d1) = first, last
            if t1 > t0 and d1 > d0:
                rate = (d1 - d0) / (t1 - t0)
                v.eta_seconds = max(0.0, (v.total - d1) / rate)
        logf = d / "log.txt"
        if logf.exists():
            with open(logf, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 64_000))
                text = f.read().decode("utf-8", "replace")
            v.log_tail = "\n".join(text.splitlines()[-log_lines:])
        return v

    def list_runs(self, kind: str | None = None) -> list[RunView]:
        """Every run on disk, newest first."""
        views = []
        for d in self.runs_dir.iterdir():
            if (d / "run.json").exists():
                try:
                    v = self.view(d.name, log_lines=0)
                except (KeyError, json.JSONDecodeError):
                    continue
                if kind is None or v.kind == kind:
                    views.append(v)
        return sorted(views, key=lambda v: v.created, reverse=True)

    def queue(self) -> list[RunView]:
        """Running and queued runs, in the order they will run."""
        runs = [v for v in self.list_runs() if v.status in ("running", "queued")]
        return sorted(runs, key=lambda v: (v.status != "running", v.created))

    def wait(self, run_id: str, timeout: float = 60.0) -> RunView:
        """Block until the run ends (tests, scripts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._tick()
            v = self.view(run_id)
            if v.status in FINAL:
                return v
            time.sleep(0.1)
        raise TimeoutError(f"run {run_id} still {self.view(run_id).status} after {timeout} s")

    def shutdown(self, interrupt: bool = True) -> None:
        """Stop the scheduler. With `interrupt`, ask running jobs to save and stop; they are
        marked interrupted and can be resumed after the restart."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not interrupt:
            return
        with self._lock:
            for proc in list(self._procs.values()):
                self._signal(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.grace_seconds
            for run_id, proc in list(self._procs.items()):
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self._signal(proc.pid, signal.SIGKILL)
                    proc.wait()
                self._update(run_id, status="interrupted", ended=time.time(),
                             note="interrupted by a studio restart; resume to continue")
                self._release(run_id)
            self._procs.clear()

    # ----- scheduler ------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # the scheduler must outlive any one bad run folder
                log.exception("job scheduler tick failed")
            self._stop.wait(self.poll_seconds)

    def _tick(self) -> None:
        with self._lock:
            self._reap()
            if any(v.status == "running" for v in self._active()):
                return
            queued = sorted((v for v in self._active() if v.status == "queued"),
                            key=lambda v: v.created)
            if queued:
                self._start(queued[0].id)

    def _active(self) -> list[RunView]:
        out = []
        for d in self.runs_dir.iterdir():
            p = d / "run.json"
            if p.exists():
                try:
                    meta = json.loads(p.read_text())
                except json.JSONDecodeError:
                    continue
                if meta["status"] in ("queued", "running"):
                    out.append(RunView(id=meta["id"], kind=meta["kind"], title=meta["kind"],
                                       status=meta["status"], created=meta["created"]))
        return out

    def _start(self, run_id: str) -> None:
        meta = self._meta(run_id)
        need = int(meta.get("vram_bytes") or 0)
        if need and self.models is not None:
            from studio.models import BudgetExceeded

            try:
                self._reservations[run_id] = self.models.reserve(need, owner=run_id)
            except BudgetExceeded as e:
                if meta.get("note") != f"waiting for GPU memory: {e}":
                    self._update(run_id, note=f"waiting for GPU memory: {e}")
                return
        d = self.run_dir(run_id)
        if not (d / "versions.json").exists():
            (d / "versions.json").write_text(json.dumps(library_versions(), indent=1))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(PROJECT_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env["PYTHONUNBUFFERED"] = "1"
        out = open(d / "stdout.txt", "ab")
        try:
            proc = subprocess.Popen([self.python, "-m", "studio.worker", str(d)],
                                    stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, cwd=str(PROJECT_ROOT))
        except OSError as e:
            self._update(run_id, status="failed", error=f"could not start the worker: {e}",
                         ended=time.time())
            self._release(run_id)
            return
        finally:
            out.close()
        self._procs[run_id] = proc
        self._update(run_id, status="running", pid=proc.pid, started=time.time(), note="")

    def _reap(self) -> None:
        for run_id, proc in list(self._procs.items()):
            code = proc.poll()
            if code is None:
                self._enforce_grace(run_id, proc.pid)
                continue
            del self._procs[run_id]
            self._finish(run_id, code)
        # runs adopted after a restart (not our children): watch their pid
        for v in self._active():
            if v.status == "running" and v.id not in self._procs:
                meta = self._meta(v.id)
                if _pid_alive(meta.get("pid")):
                    self._enforce_grace(v.id, meta.get("pid"))
                else:
                    self._finish(v.id, None)

    def _enforce_grace(self, run_id: str, pid: int | None) -> None:
        t = self._cancel_at.get(run_id)
        if t is not None and time.monotonic() - t > self.grace_seconds:
            self._signal(pid, signal.SIGKILL)
            self._update(run_id, note="killed: it did not stop within the grace period")

    def _finish(self, run_id: str, code: int | None) -> None:
        """Decide how a run ended from its exit code and its own last status event."""
        final = None
        error = ""
        for ev in read_events(self.run_dir(run_id)):
            if ev.get("type") == "status" and ev.get("state") in FINAL:
                if ev.get("t", 0) >= (self._meta(run_id).get("started") or 0):
                    final, error = ev["state"], ev.get("error", "")
        cancelled = self._cancel_at.pop(run_id, None) is not None or \
            self._meta(run_id).get("cancel_requested")
        if cancelled:
            status = "cancelled"
        elif code == 0 and final == "succeeded":
            status = "succeeded"
        elif final == "failed":
            status = "failed"
        elif code is None:
            status = final or "interrupted"
        else:
            status = "failed"
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            error = error or f"the job process crashed ({how}) before reporting a result"
        note = self._meta(run_id).get("note", "")
        if status == "cancelled" and not note.startswith("killed"):
            note = "cancelled; what it had saved is kept"
        self._update(run_id, status=status, ended=time.time(), error=error,
                     note=note if status != "succeeded" else "", exit_code=code)
        self._release(run_id)

    def _release(self, run_id: str) -> None:
        r = self._reservations.pop(run_id, None)
        if r is not None:
            r.release()

    def _recover(self) -> None:
        """After a restart: adopt workers still running, mark the others interrupted."""
        for d in self.runs_dir.iterdir():
            p = d / "run.json"
            if not p.exists():
                continue
            try:
                meta = json.loads(p.read_text())
            except json.JSONDecodeError:
                continue
            if meta["status"] == "running":
                pid = meta.get("pid")
                if pid and _pid_alive(pid) and _is_our_worker(pid, d):
                    continue  # adopted: _reap watches its pid
                self._finish_recovered(meta["id"])

    def _finish_recovered(self, run_id: str) -> None:
        final = None
        for ev in read_events(self.run_dir(run_id)):
            if ev.get("type") == "status" and ev.get("state") in FINAL:
                final = ev["state"]
        if final in ("succeeded", "failed", "cancelled"):
            self._update(run_id, status=final, ended=time.time())
        else:
            self._update(run_id, status="interrupted", ended=time.time(),
                         note="interrupted by a studio restart; resume to continue")

    @staticmethod
    def _signal(pid: int | None, sig: int) -> None:
        if not pid:
            return
        try:
            os.killpg(pid, sig)  # the worker leads its own group: children go too
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def library_versions() -> dict[str, str]:
    """Versions recorded in every run folder, so a run can be reproduced."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "diffusers", "accelerate",
                 "ultralytics", "faster-whisper", "pyannote.audio", "sentence-transformers",
                 "chromadb", "gradio", "onegpu-studio"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def run_view_dict(v: RunView) -> dict[str, Any]:
    d = asdict(v)
    d["fraction"] = v.fraction
    return d
