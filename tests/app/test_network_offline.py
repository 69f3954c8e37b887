"""Nothing phones out with --offline: the studio runs its main actions (status, RAG ingest and
search, chat, transcription with VAD, a YOLO training job) in a fresh network namespace with
only loopback up, and every connect/sendto/sendmsg of every process is recorded (strace; a
Python audit hook adds the host names asked for). With --offline: 0 attempts to reach anything
but loopback. Without it: the list of what was contacted is printed (run with -s or -rP).

Needs root and iproute2 (``ip netns``) and strace (Debian packages ``iproute2`` and
``strace``); without a namespace it runs the same actions un-namespaced and says so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _namespace() -> str | None:
    if os.geteuid() != 0 or not shutil.which("ip"):
        return None
    name = f"studio-net-{uuid.uuid4().hex[:8]}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        return None
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    return name


def _run(out: Path, offline: bool) -> dict:
    ns = _namespace()
    cmd = [sys.executable, "-m", "tests.app.net_driver", str(out)] + (["--offline"] if offline
                                                                       else [])
    env = dict(os.environ, STUDIO_NETNS=ns or "")
    try:
        if ns:
            cmd = ["ip", "netns", "exec", ns, *cmd]
        subprocess.run(cmd, cwd=str(ROOT), env=env, check=True, timeout=1200)
    finally:
        if ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    report = json.loads((out / "report.json").read_text())
    where = f"network namespace {ns} (loopback only)" if ns else \
        "NO network namespace could be made here: un-namespaced"
    print(f"\n[network test, {'--offline' if offline else 'online'}] recorded with "
          f"{report['method']} in a {where}")
    print("  actions:", json.dumps(report["actions"], indent=1))
    return report


def test_offline_studio_tries_to_reach_nothing_but_loopback(tmp_path, record_property):
    report = _run(tmp_path / "offline", offline=True)
    record_property("offline_report", json.dumps(report))
    assert report["method"].startswith("strace") or report["audited_connects"] is not None
    assert report["non_loopback_attempts"] == [], report["non_loopback_attempts"]
    assert report["audited_connects"] == [], report["audited_connects"]
    assert report["names_looked_up"] == [], report["names_looked_up"]
    failed = {k: v for k, v in report["actions"].items() if not v.startswith("ok")}
    assert not failed, f"actions failed offline: {failed}"


def test_online_studio_lists_what_it_contacts(tmp_path, record_property):
    report = _run(tmp_path / "online", offline=False)
    record_property("online_contacted", json.dumps(report["contacted"]))
    print("  contacted without --offline:", json.dumps(report["contacted"], indent=1))
    print("  host names looked up:", json.dumps(report["names_looked_up"], indent=1))
    (tmp_path / "contacted.json").write_text(json.dumps(report, indent=1))
    assert "actions" in report and report["actions"].get("studio_status", "").startswith("ok")
