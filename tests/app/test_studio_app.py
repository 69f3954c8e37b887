"""The launched studio through gradio_client: status, ledger actions, the shared job panel, and
`launch.py --share` keeping the app safe and serving when no tunnel can be opened."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import pytest

from studio.models import ModelSpec
from studio.sessions import owner_of
from tests.conftest import free_port, launch_py, launch_studio, stop_studio


@pytest.fixture(scope="module")
def toy_studio(tmp_path_factory):
    from gradio_client import Client

    s, app, url = launch_studio(tmp_path_factory.mktemp("home"), tab_modules=["tests.app.toytab"])
    yield Client(url, verbose=False), s
    stop_studio(s, app)


def tiny_model_spec(key):
    import torch

    return ModelSpec(key, load=lambda device: torch.nn.Linear(256, 256).to(device),
                     title=f"tiny {key}")


def test_status_ledger_unload_and_free_all(toy_studio):
    client, s = toy_studio
    for k in ("a", "b"):
        s.models.register(tiny_model_spec(k))
        with s.models.use(k):
            pass
    st = client.predict(api_name="/studio_status")
    assert "CPU only" in st["device"]
    assert {r["key"] for r in st["ledger"]} == {"a", "b"}
    assert all(r["bytes"] == 257 * 256 * 4 for r in st["ledger"])  # measured from the weights
    assert "Unloaded a" in client.predict("a", api_name="/studio_unload")
    assert [r["key"] for r in client.predict(api_name="/studio_status")["ledger"]] == ["b"]
    msg = client.predict(api_name="/studio_free_all")
    assert msg.startswith("Freed")
    assert client.predict(api_name="/studio_status")["ledger"] == []


def test_job_panel_start_view_cancel_resume(toy_studio):
    client, s = toy_studio
    upd = client.predict(200, api_name="/toy_start")
    rid = upd if isinstance(upd, str) else upd["value"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and s.jobs.view(rid).done < 3:
        time.sleep(0.1)
    status_md, progress, plot, log, files = client.predict(rid, api_name="/toy_job_view")
    assert "running" in status_md and "<progress" in progress
    client.predict(rid, api_name="/toy_cancel")
    assert s.jobs.wait(rid, 30).status == "cancelled"
    st = client.predict(api_name="/studio_status")
    assert st["queue"] == []
    client.predict(rid, api_name="/toy_resume")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and s.jobs.view(rid).status != "running":
        time.sleep(0.1)
    assert s.jobs.view(rid).attempts == 2
    s.jobs.cancel(rid)
    s.jobs.wait(rid, 30)


def test_resume_of_finished_run_is_a_clear_error(toy_studio):
    from gradio_client.exceptions import AppError

    client, s = toy_studio
    mine = owner_of(None, SimpleNamespace(session_hash=client.session_hash))  # the script's
    rid = s.jobs.submit("toy", "tests.jobs.toy:count", {"steps": 1, "sleep": 0.01}, owner=mine)
    s.jobs.wait(rid, 30)
    with pytest.raises(AppError, match="only a cancelled, failed or interrupted run"):
        client.predict(rid, api_name="/toy_resume")
    with pytest.raises(AppError, match="Pick a model"):
        client.predict(None, api_name="/studio_unload")


@pytest.mark.slow
def test_share_without_internet_generates_password_and_keeps_serving(tmp_path):
    from gradio_client import Client

    port = free_port()
    with launch_py("--share", "--port", str(port), "--home", str(tmp_path / "home"),
                   "--profile", "small", "--offline", until="is running at") as text:
        # --offline: the share service (on the internet) is not even tried
        assert "--offline: no public link is opened" in text, text
        password = re.search(r"password: (\S+)", text).group(1)
        url = f"http://127.0.0.1:{port}/"
        with pytest.raises(ValueError, match="credentials were not provided"):
            Client(url, verbose=False)  # no credentials: refused
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, auth=("studio", "wrong"), verbose=False)
        client = Client(url, auth=("studio", password), verbose=False)
        assert "CPU only" in client.predict(api_name="/studio_status")["device"]
