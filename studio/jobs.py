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

from studio.reporting import EventTail

log = logging.getLogger("studio.jobs")

FINAL = ("succeeded", "failed", "cancelled", "interrupted")
ALL: Any = object()  # the `owner` of internal callers (scheduler, recovery, benches): no filter
NO_OWNER = "this page has no session yet; reload it"
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
    owner: str | None = None  # `studio.sessions.owner_of` of who started it; None: shared

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
        self._cancel_at: dict[str, float] = {}  # run -> when the cancel was sent (monotonic)
        self._killed: set[str] = set()  # runs this manager force-killed after the grace period
        self._term_pending: set[str] = set()  # cancelled while their worker was starting
        self._tails: dict[str, EventTail] = {}  # events read incrementally, per run
        self._listeners: list[Any] = []
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
    def add_listener(self, fn: Any) -> None:
        """Call ``fn(run_id, status)`` when a run ends (in the scheduler thread: be quick,
        e.g. wake a thread of your own)."""
        self._listeners.append(fn)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def submit(self, kind: str, entry: str, config: dict[str, Any], title: str = "",
               vram_bytes: int = 0, dataset_hash: str | None = None,
               seed: int | None = None, owner: Any = ALL) -> str:
        """Queue a job. `entry` is ``"package.module:function"`` taking ``(config, report)``.

        `owner` (``studio.sessions.owner_of``) is who may see, stop and use the run; left out
        (internal callers, benches) the run is ownerless: shared and read-only in the pages.
        An owner of None (a page without a session) is refused."""
        module, _, func = entry.partition(":")
        if not module or not func:
            raise ValueError(f"entry must look like 'package.module:function', not {entry!r}")
        if owner is None:
            raise ValueError(NO_OWNER)
        run_id = time.strftime("%Y%m%d-%H%M%S-") + f"{kind}-" + uuid.uuid4().hex[:6]
        d = self.run_dir(run_id)
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(config, indent=1, default=str))
        meta = {
            "id": run_id, "kind": kind, "title": title or kind, "entry": entry,
            "status": "queued", "created": time.time(), "vram_bytes": int(vram_bytes),
            "dataset_hash": dataset_hash, "seed": seed, "attempts": 1, "note": "",
            "owner": None if owner is ALL else str(owner),
        }
        with self._lock:
            self._write_meta(run_id, meta)
        self._tick()
        return run_id

    # ----- ownership ------------------------------------------------------------------------
    def check(self, run_id: str, owner: Any = ALL) -> dict[str, Any]:
        """The run's meta if `owner` may see it (its own or an ownerless run); another owner's
        run raises the same KeyError as a missing one, so others' ids are never confirmed.
        For tab code that takes a run id from a request (any client can send any id)."""
        meta = self._meta(run_id)
        if owner is not ALL and meta.get("owner") not in (None, owner):
            raise KeyError(f"no such run: {run_id}")
        return meta

    def owns(self, run_id: str, owner: Any) -> bool:
        """`owner` may see and use the run (its own, or an ownerless one)."""
        try:
            self.check(run_id, owner)
        except KeyError:
            return False
        return True

    def check_path(self, path: Any, owner: Any = ALL, exports_dir: Any = None) -> None:
        """A path from a request (an adapter, a LoRA, weights typed into a field) that lies in a
        run folder, or in an export named by a run id (``exports/<tab>/<run id>/...``), is
        usable only by that run's owner (or by all for a shared run): else the KeyError of
        `check`. Other paths are not this manager's business."""
        if owner is ALL:
            return
        p = Path(path).resolve()
        runs = self.runs_dir.resolve()
        if p.is_relative_to(runs) and p != runs:
            self.check(p.relative_to(runs).parts[0], owner)
            return
        if exports_dir is not None:
            ex = Path(exports_dir).resolve()
            parts = p.relative_to(ex).parts if p.is_relative_to(ex) else ()
            if len(parts) >= 2 and (runs / parts[1] / "run.json").is_file():
                self.check(parts[1], owner)

    def _check_change(self, run_id: str, owner: Any) -> dict[str, Any]:
        """`check`, and an ownerless run is read-only for an owner (cancel, resume, delete)."""
        meta = self.check(run_id, owner)
        if owner is not ALL and meta.get("owner") is None:
            raise PermissionError(f"run {run_id} was started outside the studio's pages; it is "
                                  "read-only here")
        return meta

    def cancel(self, run_id: str, owner: Any = ALL) -> str:
        """Queued: dropped at once. Running: SIGTERM to the worker alone (its DataLoader workers
        and other children are the framework's to stop); it saves what it has. The grace period
        counts from the job's acknowledgement of the stop (``report.stopping()``), or from now
        if it never acknowledges; after it the whole process group is killed. With an `owner`,
        only that owner's run (see `_check_change`)."""
        with self._lock:
            meta = self._check_change(run_id, owner)
            if meta["status"] == "queued":
                self._update(run_id, status="cancelled", ended=time.time(),
                             note="cancelled before it started")
                return "cancelled"
            if meta["status"] != "running":
                return meta["status"]
            pid = meta.get("pid")
            self._cancel_at.setdefault(run_id, time.monotonic())
            self._update(run_id, cancel_requested=True, note="stopping: saving what exists")
            if self._worker_ready(run_id):
                self._signal(pid, signal.SIGTERM, group=False)
            else:  # still starting up: SIGTERM now would kill it before it can answer
                self._term_pending.add(run_id)
            return "stopping"

    def _worker_ready(self, run_id: str) -> bool:
        """The worker has installed its stop handler (it reported this attempt running)."""
        started = float(self._meta(run_id).get("started") or 0)
        return self._tail(run_id).attempt_start >= started > 0

    def resume(self, run_id: str, owner: Any = ALL) -> str:
        """Queue a cancelled, failed or interrupted run again; it continues from its last
        checkpoint (the job reads it with ``report.last_checkpoint()``). With an `owner`, only
        that owner's run (see `_check_change`)."""
        with self._lock:
            meta = self._check_change(run_id, owner)
            if meta["status"] not in ("cancelled", "failed", "interrupted"):
                raise ValueError(f"run {run_id} is {meta['status']}; only a cancelled, failed or "
                                 "interrupted run can be resumed")
            self._update(run_id, status="queued", attempts=meta.get("attempts", 1) + 1,
                         cancel_requested=False, note="queued to resume", error="", ended=None)
        self._tick()
        return run_id

    def delete(self, run_id: str, owner: Any = ALL) -> None:
        """Remove a finished run's folder (a queued or running one: cancel it first). With an
        `owner`, only that owner's run (see `_check_change`)."""
        import shutil

        with self._lock:
            meta = self._check_change(run_id, owner)
            if meta["status"] not in FINAL:
                raise ValueError(f"run {run_id} is {meta['status']}; cancel it before deleting it")
            shutil.rmtree(self.run_dir(run_id))
            self._tails.pop(run_id, None)

    def _tail(self, run_id: str) -> EventTail:
        with self._lock:
            tail = self._tails.get(run_id)
            if tail is None:
                tail = self._tails[run_id] = EventTail(self.run_dir(run_id))
            tail.update()
            return tail

    def view(self, run_id: str, log_lines: int = 40, owner: Any = ALL) -> RunView:
        """One run: its ``run.json`` plus its events, read from where the last view stopped.
        ``log_lines=0`` reads no log. With an `owner`, another owner's run is a KeyError."""
        return self._view(self.check(run_id, owner), log_lines)

    def _view(self, meta: dict[str, Any], log_lines: int) -> RunView:
        run_id = meta["id"]
        d = self.run_dir(run_id)
        v = RunView(id=run_id, kind=meta["kind"], title=meta.get("title", meta["kind"]),
                    status=meta["status"], created=meta["created"], started=meta.get("started"),
                    ended=meta.get("ended"), error=meta.get("error", ""),
                    note=meta.get("note", ""), attempts=meta.get("attempts", 1), run_dir=str(d),
                    owner=meta.get("owner"))
        tail = self._tail(run_id)
        last, first = tail.last_progress, tail.first_progress
        if last is not None:
            v.done, v.total, v.message = last["done"], last.get("total"), last.get("message", "")
        v.metrics = [dict(row) for _, row in sorted(tail.metrics.items())]
        v.artifacts = [{"path": str(d / ev["path"]), "kind": ev.get("kind", "file"),
                        "label": ev.get("label", "")} for ev in tail.artifacts]
        if v.status == "running" and first and last and v.total:
            t0, d0, t1, d1 = first["t"], first["done"], last["t"], last["done"]
            if t1 > t0 and d1 > d0:
                rate = (d1 - d0) / (t1 - t0)
                v.eta_seconds = max(0.0, (v.total - d1) / rate)
        logf = d / "log.txt"
        if log_lines > 0 and logf.exists():
            with open(logf, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 64_000))
                text = f.read().decode("utf-8", "replace")
            v.log_tail = "\n".join(text.splitlines()[-log_lines:])
        return v

    def fingerprint(self, run_id: str) -> tuple[Any, ...] | None:
        """Changes whenever anything a view shows may have changed (sizes and times of the
        run's files): a panel compares it to send nothing when nothing moved."""
        try:
            d = self.run_dir(run_id)
        except KeyError:
            return None
        out: list[Any] = [run_id]
        for name in ("run.json", "events.jsonl", "log.txt"):
            try:
                st = (d / name).stat()
                out += [st.st_size, st.st_mtime_ns]
            except OSError:
                out += [None, None]
        return tuple(out)

    def _metas(self) -> list[dict[str, Any]]:
        out = []
        for d in self.runs_dir.iterdir():
            p = d / "run.json"
            if p.exists():
                try:
                    out.append(json.loads(p.read_text()))
                except (OSError, json.JSONDecodeError):
                    continue
        return out

    def list_runs(self, kind: str | None = None, owner: Any = ALL) -> list[RunView]:
        """Every run on disk, newest first; with an `owner` (a str, or None for a page with no
        session), only that owner's runs and the ownerless (shared) ones."""
        views = []
        for meta in self._metas():
            if kind is not None and meta.get("kind") != kind:
                continue
            if owner is not ALL and meta.get("owner") not in (None, owner):
                continue
            try:
                views.append(self.view(meta["id"], log_lines=0))
            except (KeyError, json.JSONDecodeError):
                continue
        return sorted(views, key=lambda v: v.created, reverse=True)

    def queue(self) -> list[RunView]:
        """Running and queued runs, in the order they will run (only their folders are read:
        the status bar asks every two seconds, whatever the history holds)."""
        runs = []
        for meta in self._metas():
            if meta.get("status") in ("running", "queued"):
                try:
                    runs.append(self.view(meta["id"], log_lines=0))
                except (KeyError, json.JSONDecodeError):
                    continue
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
                self._signal(proc.pid, signal.SIGTERM, group=False)
            deadline = time.monotonic() + self.grace_seconds
            for run_id, proc in list(self._procs.items()):
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self._signal(proc.pid, signal.SIGKILL, group=True)
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
        return [RunView(id=m["id"], kind=m["kind"], title=m["kind"], status=m["status"],
                        created=m["created"])
                for m in self._metas() if m.get("status") in ("queued", "running")]

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
                    if meta.get("cancel_requested") and v.id not in self._cancel_at:
                        self._cancel_at[v.id] = time.monotonic()  # cancelled before a restart
                    self._enforce_grace(v.id, meta.get("pid"))
                else:
                    self._finish(v.id, None)

    def _enforce_grace(self, run_id: str, pid: int | None) -> None:
        """Kill the worker's whole group once the grace period is over. It counts from the
        job's acknowledgement of the stop when there is one (then a framework's final save or
        validation has the whole period), else from the cancel."""
        t = self._cancel_at.get(run_id)
        if t is None or run_id in self._killed:
            return
        if run_id in self._term_pending and self._worker_ready(run_id):
            self._term_pending.discard(run_id)
            self._signal(pid, signal.SIGTERM, group=False)
        grace = self.grace_seconds
        ack = self._tail(run_id).stopping
        if ack is not None:
            # the event's wall time, moved onto the monotonic clock of the cancel
            t = max(t, time.monotonic() - max(0.0, time.time() - float(ack.get("t", 0))))
            grace = max(grace, float(ack.get("grace_s") or 0))
        if time.monotonic() - t > grace:
            self._signal(pid, signal.SIGKILL, group=True)
            self._killed.add(run_id)
            self._update(run_id, note="killed: it did not stop within the grace period")

    def _finish(self, run_id: str, code: int | None) -> None:
        """Decide how a run ended (see `verdict`)."""
        meta = self._meta(run_id)
        tail = self._tail(run_id)
        final = tail.final_status(since=float(meta.get("started") or 0))
        cancelled = self._cancel_at.pop(run_id, None) is not None or \
            bool(meta.get("cancel_requested"))
        killed = run_id in self._killed
        self._killed.discard(run_id)
        self._term_pending.discard(run_id)
        status, error, note = verdict(code, final, cancelled, killed,
                                      adopted=code is None, note=meta.get("note", ""))
        self._update(run_id, status=status, ended=time.time(), error=error, note=note,
                     exit_code=code)
        self._release(run_id)
        self._notify(run_id, status)

    def _notify(self, run_id: str, status: str) -> None:
        for fn in list(self._listeners):
            try:
                fn(run_id, status)
            except Exception:
                log.exception("job listener failed for %s", run_id)

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
        meta = self._meta(run_id)
        ev = self._tail(run_id).final_status(since=float(meta.get("started") or 0))
        final = ev["state"] if ev else None
        if final in ("succeeded", "failed", "cancelled"):
            self._update(run_id, status=final, ended=time.time(), error=ev.get("error", ""))
        else:
            self._update(run_id, status="interrupted", ended=time.time(),
                         note="interrupted by a studio restart; resume to continue")

    @staticmethod
    def _signal(pid: int | None, sig: int, group: bool) -> None:
        """`sig` to the worker, or with `group` to its whole process group (it leads its own:
        DataLoader workers and other children go too; only for the final kill)."""
        if not pid:
            return
        if group:
            try:
                os.killpg(pid, sig)
                return
            except (ProcessLookupError, PermissionError):
                pass
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def verdict(code: int | None, final: dict[str, Any] | None, cancel_requested: bool,
            killed: bool, adopted: bool, note: str = "") -> tuple[str, str, str]:
    """(status, error, note) of a run that ended, from one cause, whoever started the worker.

    `code` is the exit code (None for a worker adopted after a restart: unknown), `final` the
    worker's own last status event of this attempt, `killed` whether the grace period ran out.
    A job that says it succeeded, failed or stopped is believed when its exit agrees; a
    process that died without a word failed (a signal, the OOM killer, a crash), also during
    a cancel: a crash while saving is not a clean "cancelled"."""
    state = final.get("state") if final else None
    error = (final or {}).get("error", "")
    if killed:
        return "cancelled", "", "killed: it did not stop within the grace period; its last " \
                                "checkpoint is kept"
    if state == "failed":
        return "failed", error or "the job reported a failure", note
    if state == "cancelled" and code in (0, None):
        early = bool((final or {}).get("early"))
        return "cancelled", "", ("cancelled before it started" if early else
                                 "cancelled; what it had saved is kept")
    if state == "succeeded" and code in (0, None):
        return ("cancelled", "", "cancelled; it had just finished, its result is kept") \
            if cancel_requested else ("succeeded", "", "")
    if code is None:
        how = "killed or crashed; it was adopted after a restart, so its exit status is unknown"
    elif code < 0:
        how = f"killed by signal {-code}"
    else:
        how = f"exit code {code}"
    how = f"the job process ended without reporting a result ({how})"
    if cancel_requested:
        how += " while it was stopping"
    return "failed", how, ""


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
