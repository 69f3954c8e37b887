"""`kill <studio pid>` (SIGTERM, what a service manager sends) stops the studio cleanly; its
running jobs keep running, it says so, and the next start adopts them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.jobs import JobManager, _pid_alive
from tests.conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_sigterm_stops_the_studio_and_leaves_jobs_running_for_the_next_start(tmp_path):
    home = tmp_path / "home"
    run = home / "runs" / "20260101-000000-toy-abcdef"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"steps": 4000, "sleep": 0.05}))
    (run / "run.json").write_text(json.dumps({
        "id": run.name, "kind": "toy", "title": "toy", "entry": "tests.jobs.toy:count",
        "status": "queued", "created": time.time(), "vram_bytes": 0, "attempts": 1,
        "note": ""}))  # queued before the start: the studio runs it
    proc = subprocess.Popen([sys.executable, "launch.py", "--port", str(free_port()), "--home",
                             str(home), "--profile", "small", "--offline"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    pid = None
    try:
        lines = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "is running at" in line or not line:
                break
        assert "is running at" in "".join(lines), "".join(lines)[-3000:]
        wait_for(lambda: json.loads((run / "run.json").read_text())["status"] == "running",
                 timeout=60)
        pid = json.loads((run / "run.json").read_text())["pid"]
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest[-3000:]
        assert "Stopped (SIGTERM). 1 running job(s) keep running" in rest, rest[-3000:]
        assert _pid_alive(pid), "the job was stopped with the studio"
        jm = JobManager(home / "runs", poll_seconds=0.1)  # the next start
        try:
            assert jm.view(run.name).status == "running", "adopted, not interrupted"
            jm.cancel(run.name)
            assert jm.wait(run.name, timeout=60).status == "cancelled"
        finally:
            jm.shutdown()
    finally:
        if proc.poll() is None:
            proc.kill()
        if pid and _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
