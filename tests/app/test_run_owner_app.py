"""Two strangers on one shared link (gradio_client against a launched studio, the production
queue): B never sees, views, stops or resumes A's run, in the job panel or the status area, and
cannot chat with A's QLoRA adapter by sending its run id; A can do all of these. Each Client is
one owner (its session; a browser's owner is its BrowserState secret)."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from studio.sessions import owner_of
from tests.conftest import launch_studio, stop_studio
from tests.conftest import wait_for as _until


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    from gradio_client import Client

    home = tmp_path_factory.mktemp("owners")
    s, app, url = launch_studio(home, tab_modules=["tests.app.paneltab", "tabs.qlora"])
    yield s, Client(url, verbose=False), Client(url, verbose=False), home
    stop_studio(s, app)


def _owner(client) -> str:
    return owner_of(None, SimpleNamespace(session_hash=client.session_hash))


def _ids(update) -> list[str]:
    return [c[1] if isinstance(c, (list, tuple)) else c for c in update["choices"]]


def _refused(call, rid):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        call()
    assert str(e.value) == f"No run {rid}.", str(e.value)


def test_b_can_neither_see_nor_stop_nor_resume_as_run(two):
    s, a, b, _ = two
    up_a = a.predict(400, 0.1, api_name="/paneltoy_start")
    rid = up_a["value"]
    assert rid in _ids(up_a) and s.jobs.view(rid).owner == _owner(a)
    _until(lambda: s.jobs.view(rid).status == "running")
    up_b = b.predict(2, 0.01, api_name="/paneltoy_start")  # queued behind A's
    rb = up_b["value"]
    assert rid not in _ids(up_b) and rb in _ids(up_b)  # B's picker: its own runs only

    # B: A's run is answered exactly as a run that does not exist
    missing = "20990101-000000-paneltoy-abcdef"
    assert b.predict(missing, api_name="/paneltoy_job_view")[0] == f"No run {missing}."
    status, _progress, _plot, log, files = b.predict(rid, api_name="/paneltoy_job_view")
    assert status == f"No run {rid}." and log == "" and not files
    _refused(lambda: b.predict(rid, api_name="/paneltoy_cancel"), rid)
    _refused(lambda: b.predict(rid, api_name="/studio_cancel_job"), rid)
    queue_b = b.predict(api_name="/studio_status")["queue"]
    assert rid not in json.dumps(queue_b) and "Panel toy run" in json.dumps(queue_b)  # B's own
    assert queue_b[0]["id"] == "" and queue_b[0]["title"] == "another session's paneltoy run"
    assert s.jobs.view(rid).status == "running"  # nothing B did reached it

    # A sees, stops and resumes its own
    assert "running" in a.predict(rid, api_name="/paneltoy_job_view")[0]
    assert rid in json.dumps(a.predict(api_name="/studio_status")["queue"])
    assert "stopping" in a.predict(rid, api_name="/studio_cancel_job")
    _until(lambda: s.jobs.view(rid).status == "cancelled")
    _refused(lambda: b.predict(rid, api_name="/paneltoy_resume"), rid)
    assert s.jobs.view(rid).status == "cancelled"
    a.predict(rid, api_name="/paneltoy_resume")
    assert s.jobs.view(rid).attempts == 2
    _until(lambda: s.jobs.view(rid).status == "running" or s.jobs.view(rb).status == "running")
    _refused(lambda: b.predict(rid, api_name="/paneltoy_cancel"), rid)
    a.predict(rid, api_name="/paneltoy_cancel")
    _until(lambda: s.jobs.view(rid).status == "cancelled")
    assert s.jobs.wait(rb, timeout=60).status == "succeeded"
    assert b.predict(rb, api_name="/paneltoy_job_view")[0].startswith("**Panel toy run**")


def _adapter_run(s, home, owner) -> str:
    """A finished QLoRA run of `owner` with a real (tiny) adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tabs.qlora.config import QLoRAConfig
    from tabs.qlora.tiny import make_tiny_base

    base = make_tiny_base(home / "tiny-base")
    rid = "20260101-000000-qlora-a0a0a0"
    run = s.jobs.runs_dir / rid
    run.mkdir(parents=True)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                          LoraConfig(r=4, target_modules=["q_proj"]))
    lora.save_pretrained(run / "adapter")
    cfg = QLoRAConfig(base_model=str(base), train_file="x")
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run / "run.json").write_text(json.dumps({"id": rid, "kind": "qlora", "status": "succeeded",
                                              "created": time.time(), "owner": owner}))
    return rid


def test_b_cannot_use_as_adapter_by_its_run_id(two):
    s, a, b, home = two
    rid = _adapter_run(s, home, _owner(a))
    for api in ("/qlora_compare", "/qlora_export"):
        args = (rid, False) if api == "/qlora_export" else (rid,)
        _refused(lambda api=api, args=args: b.predict(*args, api_name=api), rid)
    _refused(lambda: b.predict(rid, "hi", [], api_name="/qlora_chat"), rid)
    assert not s.models.loaded()  # refused before anything was loaded for B
    history, _ = a.predict(rid, "hi", [], api_name="/qlora_chat")
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert "exports" in a.predict(rid, False, api_name="/qlora_export")
