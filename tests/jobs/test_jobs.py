"""Job lifecycle with toy jobs in real child processes (`python -m studio.worker RUN_DIR`)."""

from __future__ import annotations

import json
import os
import time

import pytest

from studio.devices import FakeProbe
from studio.jobs import JobManager, _pid_alive
from studio.models import ModelManager, ModelSpec
from tests.conftest import wait_for

GiB = 1024**3


@pytest.fixture
def jobs(tmp_path):
    jm = JobManager(tmp_path / "runs", grace_seconds=2.0, poll_seconds=0.1)
    yield jm
    jm.shutdown()



def test_job_succeeds_with_progress_metrics_and_versions(jobs):
    rid = jobs.submit("toy", "tests.jobs.toy:count", {"steps": 6, "sleep": 0.01}, seed=3)
    v = jobs.wait(rid, timeout=60)
    assert v.status == "succeeded"
    assert (v.done, v.total) == (6, 6)
    assert [m["step"] for m in v.metrics] == [1, 2, 3, 4, 5, 6]
    d = jobs.run_dir(rid)
    assert json.loads((d / "config.json").read_text())["steps"] == 6
    assert "torch" in json.loads((d / "versions.json").read_text())
    assert json.loads((d / "run.json").read_text())["seed"] == 3
    assert "finished" in v.log_tail


def test_exception_is_reported_as_failed(jobs):
    v = jobs.wait(jobs.submit("toy", "tests.jobs.toy:boom", {}), timeout=60)
    assert v.status == "failed"
    assert "bad learning rate" in v.error
    assert "Traceback" in (jobs.run_dir(v.id) / "log.txt").read_text()


@pytest.mark.parametrize("entry", ["tests.jobs.toy:hard_crash", "tests.jobs.toy:silent_exit"])
def test_crash_is_never_reported_as_success(jobs, entry):
    v = jobs.wait(jobs.submit("toy", entry, {}), timeout=60)
    assert v.status == "failed"
    assert "crashed" in v.error or "exit" in v.error or v.error


def test_cancel_stops_the_job_and_keeps_its_checkpoint(jobs):
    rid = jobs.submit("toy", "tests.jobs.toy:count", {"steps": 400, "sleep": 0.05, "every": 3})
    assert wait_for(lambda: jobs.view(rid).done >= 4)
    pid = jobs.view(rid) and json.loads((jobs.run_dir(rid) / "run.json").read_text())["pid"]
    t0 = time.monotonic()
    assert jobs.cancel(rid) == "stopping"
    v = jobs.wait(rid, timeout=30)
    assert v.status == "cancelled"
    assert time.monotonic() - t0 < jobs.grace_seconds + 1.5
    assert not _pid_alive(pid)
    assert (jobs.run_dir(rid) / "ckpt.json").exists()
    assert v.done < 400


def test_stubborn_job_is_killed_after_grace_period(jobs):
    rid = jobs.submit("toy", "tests.jobs.toy:stubborn", {})
    pid_file = jobs.run_dir(rid) / "pid.txt"
    assert wait_for(pid_file.exists)
    pid = int(pid_file.read_text())
    jobs.cancel(rid)
    time.sleep(jobs.grace_seconds * 0.5)
    assert _pid_alive(pid)  # it ignored SIGTERM, still inside the grace period
    v = jobs.wait(rid, timeout=jobs.grace_seconds + 10)
    assert v.status == "cancelled"
    assert "killed" in v.note
    assert wait_for(lambda: not _pid_alive(pid), timeout=5)


def test_resume_continues_from_last_checkpoint(jobs):
    rid = jobs.submit("toy", "tests.jobs.toy:count", {"steps": 30, "sleep": 0.05, "every": 4})
    assert wait_for(lambda: jobs.view(rid).done >= 9)
    jobs.cancel(rid)
    v = jobs.wait(rid, timeout=30)
    assert v.status == "cancelled" and v.resumable
    ck_step = json.loads((jobs.run_dir(rid) / "ckpt.json").read_text())["step"]
    assert ck_step >= 8
    jobs.resume(rid)
    v = jobs.wait(rid, timeout=60)
    assert v.status == "succeeded" and v.attempts == 2
    starts = [int(line.split()[1]) for line in
              (jobs.run_dir(rid) / "seen.txt").read_text().splitlines()]
    assert starts == [0, ck_step]  # the second attempt began where the checkpoint was
    with pytest.raises(ValueError):
        jobs.resume(rid)  # a finished run cannot be resumed


def test_one_job_at_a_time_in_order(jobs):
    a = jobs.submit("toy", "tests.jobs.toy:count", {"steps": 8, "sleep": 0.05})
    b = jobs.submit("toy", "tests.jobs.toy:count", {"steps": 2, "sleep": 0.01})
    assert wait_for(lambda: jobs.view(a).status == "running")
    assert jobs.view(b).status == "queued"
    assert [v.id for v in jobs.queue()] == [a, b]
    va, vb = jobs.wait(a, 60), jobs.wait(b, 60)
    assert va.status == vb.status == "succeeded"
    assert vb.started >= va.ended - 0.5


def test_cancel_queued_job(jobs):
    a = jobs.submit("toy", "tests.jobs.toy:count", {"steps": 20, "sleep": 0.05})
    b = jobs.submit("toy", "tests.jobs.toy:count", {"steps": 2})
    assert jobs.cancel(b) == "cancelled"
    jobs.cancel(a)
    jobs.wait(a, 30)
    assert jobs.view(b).status == "cancelled" and jobs.view(b).started is None


def test_restart_marks_running_job_interrupted_and_lists_past_runs(tmp_path):
    runs = tmp_path / "runs"
    jm = JobManager(runs, grace_seconds=2.0, poll_seconds=0.1)
    done = jm.submit("toy", "tests.jobs.toy:count", {"steps": 2, "sleep": 0.01})
    jm.wait(done, 60)
    rid = jm.submit("toy", "tests.jobs.toy:count", {"steps": 400, "sleep": 0.05, "every": 3})
    assert wait_for(lambda: jm.view(rid).done >= 4)
    jm.shutdown(interrupt=True)  # the studio stops: the job saves and stops
    jm2 = JobManager(runs, grace_seconds=2.0, poll_seconds=0.1)
    try:
        views = {v.id: v for v in jm2.list_runs()}
        assert views[done].status == "succeeded"
        assert views[rid].status == "interrupted" and views[rid].resumable
        jm2.resume(rid)
        assert wait_for(lambda: jm2.view(rid).status == "running")
    finally:
        jm2.shutdown()


def test_restart_after_studio_crash_marks_dead_run_interrupted(tmp_path):
    runs = tmp_path / "runs"
    jm = JobManager(runs, poll_seconds=0.1)
    rid = jm.submit("toy", "tests.jobs.toy:count", {"steps": 400, "sleep": 0.05})
    assert wait_for(lambda: jm.view(rid).done >= 2)
    pid = json.loads((jm.run_dir(rid) / "run.json").read_text())["pid"]
    jm._stop.set()  # the studio dies without cleaning up ...
    os.killpg(pid, 9)  # ... and so does its job (e.g. the machine rebooted)
    wait_for(lambda: not _pid_alive(pid))
    jm2 = JobManager(runs, poll_seconds=0.1)
    try:
        assert jm2.view(rid).status == "interrupted"
    finally:
        jm2.shutdown()


def test_job_reserves_vram_and_evicts_idle_models(tmp_path):
    probe = FakeProbe(total_bytes=16 * GiB)
    models = ModelManager(budget=10 * GiB, probe=probe)

    class M:
        def __init__(self):
            probe.alloc(6 * GiB)

    models.register(ModelSpec("chat", load=lambda d: M(), estimate=6 * GiB,
                              unload=lambda m: probe.free(6 * GiB)))
    with models.use("chat"):
        pass
    jm = JobManager(tmp_path / "runs", models=models, poll_seconds=0.1)
    try:
        rid = jm.submit("toy", "tests.jobs.toy:count", {"steps": 10, "sleep": 0.05},
                        vram_bytes=8 * GiB)
        assert wait_for(lambda: jm.view(rid).status == "running")
        assert [r.key for r in models.loaded()] == [f"job:{rid}"]  # chat was evicted
        assert models.used() <= models.budget
        jm.wait(rid, 60)
        assert models.loaded() == []  # the reservation went with the job
    finally:
        jm.shutdown()


def test_bad_entry_is_rejected(jobs):
    with pytest.raises(ValueError):
        jobs.submit("toy", "no_colon_here", {})
    v = jobs.wait(jobs.submit("toy", "tests.jobs.nonexistent:run", {}), timeout=60)
    assert v.status == "failed" and "No module named" in v.error
