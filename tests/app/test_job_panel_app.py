"""The shared job panel through gradio_client, for a job that saves a folder (as QLoRA's
adapter/): Outputs are files (the folder as a zip), and the status follows Cancel -> Resume ->
completion."""

from __future__ import annotations

import os
import time

import pytest

from tests.conftest import launch_studio, stop_studio


@pytest.fixture(scope="module")
def panel_studio(tmp_path_factory):
    from gradio_client import Client

    s, app, url = launch_studio(tmp_path_factory.mktemp("home"),
                                tab_modules=["tests.app.paneltab"])
    yield Client(url, verbose=False), s
    stop_studio(s, app)


def _start(client, steps, sleep):
    upd = client.predict(steps, sleep, api_name="/paneltoy_start")
    return upd if isinstance(upd, str) else upd["value"]


def _until(cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise TimeoutError


def test_a_run_with_a_folder_output_shows_and_offers_files(panel_studio):
    client, s = panel_studio
    rid = _start(client, 4, 0.02)
    assert s.jobs.wait(rid, timeout=60).status == "succeeded"
    status, _progress, _plot, log, files = client.predict(rid, api_name="/paneltoy_job_view")
    assert "succeeded" in status
    names = sorted(os.path.basename(f) for f in files)
    assert names == ["adapter.zip", "results.json"], files
    lines = log.splitlines()
    assert lines[-1].endswith("finished") and "the last line of the run" in lines[-2]
    assert "preamble line 0" not in log  # the last lines, not the first


def test_status_after_cancel_resume_and_completion(panel_studio):
    client, s = panel_studio
    rid = _start(client, 40, 0.15)
    _until(lambda: s.jobs.view(rid).done >= 3)
    client.predict(rid, api_name="/paneltoy_cancel")
    _until(lambda: s.jobs.view(rid).status == "cancelled")
    status = client.predict(rid, api_name="/paneltoy_job_view")[0]
    assert "cancelled" in status and "stopping" not in status
    client.predict(rid, api_name="/paneltoy_resume")
    _until(lambda: s.jobs.view(rid).status == "running")
    status = client.predict(rid, api_name="/paneltoy_job_view")[0]
    assert "running" in status and "stopping" not in status and "attempt 2" in status
    assert s.jobs.wait(rid, timeout=90).status == "succeeded"
    status, _p, _pl, _log, files = client.predict(rid, api_name="/paneltoy_job_view")
    assert "succeeded" in status and "stopping" not in status and "attempt 2" in status
    assert all(os.path.isfile(f) for f in files)
