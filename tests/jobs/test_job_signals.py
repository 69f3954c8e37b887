"""Cancel signals, grace periods and verdicts, with toy jobs in real worker processes: the
worker alone gets SIGTERM, the grace period counts from the job's acknowledgement, a cancel
before the loop ends the job at once, one cause gives one verdict whoever started the worker,
and a resumed run shows each step once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from studio.jobs import JobManager
from tests.conftest import wait_for


@pytest.fixture
def jobs(tmp_path):
    jm = JobManager(tmp_path / "runs", grace_seconds=2.0, poll_seconds=0.1)
    yield jm
    jm.shutdown()


def _running(jobs, rid, file=None):
    wait_for(lambda: jobs.view(rid).status == "running", timeout=60)
    if file:
        wait_for(lambda: (jobs.run_dir(rid) / file).exists(), timeout=60)


def test_cancel_signals_the_worker_not_its_helper_processes(jobs):
    rid = jobs.submit("toy", "tests.jobs.toy:with_child", {})
    wait_for(lambda: jobs.view(rid).done >= 1, timeout=60)
    jobs.cancel(rid)
    v = jobs.wait(rid, timeout=30)
    assert v.status == "cancelled"
    assert (jobs.run_dir(rid) / "child_alive_at_stop").read_text() == "True", \
        "SIGTERM went to the whole process group"


def test_grace_counts_from_the_acknowledgement_of_the_stop(jobs):
    # polls every 1.5 s, then saves for 1.5 s: 3 s after the cancel, but within the 2 s
    # grace from the moment it acknowledged
    rid = jobs.submit("toy", "tests.jobs.toy:slow_poller", {"poll": 1.5, "save": 1.5})
    _running(jobs, rid)
    time.sleep(0.3)
    jobs.cancel(rid)
    v = jobs.wait(rid, timeout=30)
    assert v.status == "cancelled" and "killed" not in v.note, v.note
    assert (jobs.run_dir(rid) / "saved.txt").exists(), "its final save was cut off"


def test_a_framework_may_ask_for_a_longer_grace_when_it_acknowledges(jobs):
    rid = jobs.submit("toy", "tests.jobs.toy:slow_poller",
                      {"poll": 0.05, "save": 3.5, "ask_grace": 6})
    _running(jobs, rid)
    time.sleep(0.3)
    jobs.cancel(rid)
    v = jobs.wait(rid, timeout=30)
    assert v.status == "cancelled" and (jobs.run_dir(rid) / "saved.txt").exists(), v.note


def test_cancel_before_the_loop_starts_ends_the_job_at_once(tmp_path):
    jm = JobManager(tmp_path / "runs", grace_seconds=15.0, poll_seconds=0.1)
    try:
        rid = jm.submit("toy", "tests.jobs.toy:slow_start", {})
        _running(jm, rid, "loading")
        t0 = time.monotonic()
        jm.cancel(rid)
        v = jm.wait(rid, timeout=30)
        took = time.monotonic() - t0
        assert took < 5, f"waited {took:.1f} s for a job that had not started its loop"
        assert v.status == "cancelled" and v.note == "cancelled before it started"
    finally:
        jm.shutdown()


def test_a_crash_during_the_final_save_is_a_failure_not_a_cancel(jobs):
    rid = jobs.submit("toy", "tests.jobs.toy:crash_while_saving", {})
    wait_for(lambda: jobs.view(rid).done >= 1, timeout=60)
    jobs.cancel(rid)
    v = jobs.wait(rid, timeout=30)
    assert v.status == "failed", (v.status, v.note)
    assert "while it was stopping" in v.error and "signal 9" in v.error


def test_kill_9_gives_one_verdict_for_started_and_adopted_workers(tmp_path):
    started = JobManager(tmp_path / "a", grace_seconds=2.0, poll_seconds=0.1)
    try:
        rid = started.submit("toy", "tests.jobs.toy:count", {"steps": 4000, "sleep": 0.05})
        wait_for(lambda: started.view(rid).done >= 1, timeout=60)
        os.kill(started._meta(rid)["pid"], signal.SIGKILL)
        mine = started.wait(rid, timeout=30)
    finally:
        started.shutdown()

    first = JobManager(tmp_path / "b", poll_seconds=0.1, start_thread=False)
    rid2 = first.submit("toy", "tests.jobs.toy:count", {"steps": 4000, "sleep": 0.05})
    wait_for(lambda: first.view(rid2).done >= 1, timeout=60)
    first._stop.set()  # the studio "restarts": a second manager adopts the live worker
    second = JobManager(tmp_path / "b", poll_seconds=0.1, start_thread=False)
    assert second.view(rid2).status == "running"
    os.kill(second._meta(rid2)["pid"], signal.SIGKILL)
    first._procs[rid2].wait()  # reap the zombie the first manager's Popen holds
    wait_for(lambda: (second._tick(), second.view(rid2).status)[1] != "running", timeout=30)
    adopted = second.view(rid2)
    assert mine.status == adopted.status == "failed"
    for v in (mine, adopted):
        assert "ended without reporting a result" in v.error, v.error
    assert "signal 9" in mine.error and "adopted" in adopted.error


def test_a_resumed_run_shows_each_step_once(jobs):
    rid = jobs.submit("toy", "tests.jobs.toy:count", {"steps": 30, "sleep": 0.05, "every": 10})
    wait_for(lambda: jobs.view(rid).done >= 15, timeout=60)
    jobs.cancel(rid)
    assert jobs.wait(rid, timeout=30).status == "cancelled"
    jobs.resume(rid)
    v = jobs.wait(rid, timeout=60)
    assert v.status == "succeeded"
    steps = [m["step"] for m in v.metrics]
    assert steps == list(range(1, 31)), steps


def test_status_reads_run_json_and_new_events_only(tmp_path):
    """200 finished runs of 2,000 events each: the status bar's queue() does not parse them,
    and a run's view parses only what was appended since the last one."""
    import json

    from studio.reporting import EventTail

    runs = tmp_path / "runs"
    line = json.dumps({"t": 1.0, "type": "metrics", "step": 1, "train_loss": 0.5}) + "\n"
    blob = line * 2000
    for i in range(200):
        d = runs / f"20260101-000000-toy-{i:06x}"
        d.mkdir(parents=True)
        (d / "events.jsonl").write_text(blob)
        (d / "run.json").write_text(json.dumps({"id": d.name, "kind": "toy", "title": "t",
                                                "status": "succeeded", "created": i}))
    jm = JobManager(runs, start_thread=False)
    t0 = time.perf_counter()
    assert jm.queue() == []
    took = time.perf_counter() - t0
    assert took < 0.5, f"queue() took {took:.2f} s for 200 finished runs"
    d = runs / "20260101-000000-toy-000000"
    tail = EventTail(d)
    assert tail.update() and tail.offset == len(blob)
    with open(d / "events.jsonl", "a") as f:
        f.write(json.dumps({"t": 2.0, "type": "progress", "done": 3, "total": 9}) + "\n")
        f.write('{"t": 3.0, "type": "progr')  # a writer mid-line
    assert tail.update() and tail.last_progress["done"] == 3
    assert tail.offset == len(blob) + len(json.dumps({"t": 2.0, "type": "progress", "done": 3,
                                                      "total": 9})) + 1, "half line left"
    assert not tail.update()
    (d / "log.txt").write_text("a line\n" * 50)
    assert jm.view(d.name, log_lines=0).log_tail == ""
    assert jm.view(d.name, log_lines=3).log_tail == "a line\na line\na line"
    assert Path(jm.view(d.name).run_dir) == d
