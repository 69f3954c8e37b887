"""The job panel's Outputs are files (a folder as one zip, made once) and its ETA after a
resume counts only this attempt's work."""

from __future__ import annotations

import json
import os
import time
import zipfile

from studio.jobs import JobManager, RunView
from studio.ui import views


def _view(run_dir, artifacts):
    return RunView(id="r1", kind="qlora", title="t", status="succeeded", created=0.0,
                   run_dir=str(run_dir),
                   artifacts=[{"path": str(run_dir / p), "kind": k, "label": ""}
                              for p, k in artifacts])


def test_outputs_are_files_and_a_folder_is_one_zip_made_once(tmp_path):
    run = tmp_path / "r1"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 5000)
    (run / "results.json").write_text("{}")
    (run / "ckpt").mkdir()
    v = _view(run, [("adapter", "model"), ("adapter", "model"), ("results.json", "file"),
                    ("ckpt", "checkpoint"), ("gone.json", "file")])
    out = views.output_files(v)
    assert all(os.path.isfile(p) for p in out), out  # never a folder (IsADirectoryError)
    assert [os.path.basename(p) for p in out] == ["adapter.zip", "results.json"]
    with zipfile.ZipFile(out[0]) as zf:
        assert sorted(zf.namelist()) == ["adapter/adapter_config.json",
                                         "adapter/adapter_model.safetensors"]
    made = os.stat(out[0]).st_mtime_ns
    time.sleep(0.05)
    assert views.output_files(v)[0] == out[0]
    assert os.stat(out[0]).st_mtime_ns == made  # not re-made on every refresh
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"\1" * 6000)
    views.output_files(v)
    assert os.stat(out[0]).st_mtime_ns != made  # re-made once the folder changed
    with zipfile.ZipFile(out[0]) as zf:
        assert zf.getinfo("adapter/adapter_model.safetensors").file_size == 6000


def test_nothing_to_offer_is_none(tmp_path):
    (tmp_path / "r1" / "adapter").mkdir(parents=True)  # an empty folder: nothing yet
    assert views.output_files(_view(tmp_path / "r1", [("adapter", "model")])) is None


def _events(path, events):
    with open(path, "a") as f:
        for ev in events:
            f.write(json.dumps(ev) + "\n")


def test_eta_right_after_a_resume_counts_only_this_attempts_work(tmp_path):
    """Attempt 2 resumes at step 50 of 100 after 20 s of loading; a step takes 1 s. The
    ETA must be ~49 s (the old one took 0 -> 51 in 21 s as the rate: ~20 s)."""
    jobs = JobManager(tmp_path / "runs", start_thread=False)
    d = jobs.runs_dir / "r1"
    d.mkdir()
    t = time.time() - 1000
    (d / "run.json").write_text(json.dumps({"id": "r1", "kind": "toy", "status": "running",
                                            "created": t, "started": t + 500, "attempts": 2}))
    ev = [{"t": t, "type": "status", "state": "running", "attempt": 1}]
    ev += [{"t": t + 10 + s, "type": "progress", "done": s, "total": 100} for s in range(51)]
    ev += [{"t": t + 500, "type": "status", "state": "running", "attempt": 2,
            "resume_step": 50},
           {"t": t + 501, "type": "progress", "done": 0, "total": None,
            "message": "loading the base model"},
           {"t": t + 520, "type": "progress", "done": 50, "total": 100, "message": "training"},
           {"t": t + 521, "type": "progress", "done": 51, "total": 100}]
    _events(d / "events.jsonl", ev)
    v = jobs.view("r1")
    assert v.eta_seconds is not None and 45 <= v.eta_seconds <= 55, v.eta_seconds
    _events(d / "events.jsonl", [{"t": t + 522 + i, "type": "progress", "done": 52 + i,
                                  "total": 100} for i in range(10)])
    v = jobs.view("r1")
    assert 35 <= v.eta_seconds <= 45, v.eta_seconds


def test_eta_of_a_fresh_run_leaves_the_loading_time_out(tmp_path):
    jobs = JobManager(tmp_path / "runs", start_thread=False)
    d = jobs.runs_dir / "r1"
    d.mkdir()
    t = time.time() - 1000
    (d / "run.json").write_text(json.dumps({"id": "r1", "kind": "toy", "status": "running",
                                            "created": t, "started": t}))
    _events(d / "events.jsonl", [
        {"t": t, "type": "status", "state": "running", "attempt": 1},
        {"t": t + 1, "type": "progress", "done": 0, "total": 100, "message": "reading"},
        {"t": t + 60, "type": "progress", "done": 0, "total": 100, "message": "tokenizer"},
        *[{"t": t + 60 + s, "type": "progress", "done": s, "total": 100} for s in range(1, 11)]])
    v = jobs.view("r1")
    assert 85 <= v.eta_seconds <= 95, v.eta_seconds  # 90 steps at 1 s, not ~550 s
