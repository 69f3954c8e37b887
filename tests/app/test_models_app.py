"""The Models tab against a local fake hub (tests/fakehub.py) with the real huggingface_hub
client: download with progress to 100 % then chat with it, Cancel and resume with the same
bytes, a gated model's plain message and then its download with a token, the token never in
logs, run folders or the page, the disk list and Delete, the disk-free and will-it-fit checks."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path

import pytest

from tests.conftest import launch_studio, stop_studio
from tests.fakehub import FakeHub, FakeRepo, point_client_at

TOKEN = "hf_studioTEST_0123456789abcdef"
MiB = 1024**2


@pytest.fixture(scope="module")
def tiny_chat_folder(tmp_path_factory):
    from studio.llm.testing import build_tokenizer, save_chat_model, tiny_model

    tok = build_tokenizer("llama3.1")
    return save_chat_model(tiny_model("llama3.1", tok, seed=3), tok,
                           tmp_path_factory.mktemp("tinychat") / "model")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_chat_folder):
    """A fake hub with four repos, the client pointed at it, and a launched studio."""
    from gradio_client import Client

    root = tmp_path_factory.mktemp("models")
    hub = FakeHub().start()
    hub.add_folder("tiny/chat", tiny_chat_folder, bytes_per_second=600_000)
    shard = [bytes([i]) * 3 * MiB + hashlib.sha256(bytes([i])).digest() for i in (1, 2)]
    hub.add(FakeRepo("slow/model", {"config.json": b'{"model_type": "bert"}',
                                    "model-00001-of-00002.safetensors": shard[0],
                                    "model-00002-of-00002.safetensors": shard[1]},
                     bytes_per_second=2 * MiB))
    hub.add(FakeRepo("tiny/second", {"config.json": b"{}", "model.safetensors": b"s" * 999}))
    hub.add(FakeRepo("gated/model", {"config.json": b"{}", "model.safetensors": b"w" * 5000},
                     gated=True, token=TOKEN))
    hub.add(FakeRepo("huge/model", {"config.json": b"{}"},
                     claimed_sizes={"model.safetensors": 2 * 1024**3}))
    mp = pytest.MonkeyPatch()
    point_client_at(mp, hub, root / "hf-cache")
    s, app, url = launch_studio(root / "home", tab_modules=["tabs.models", "tabs.chat"])
    client = Client(url, verbose=False)
    yield {"hub": hub, "s": s, "client": client, "url": url, "cache": root / "hf-cache"}
    stop_studio(s, app)
    hub.stop()
    mp.undo()


def _percent(html: str) -> float:
    return float(re.search(r"value='([\d.]+)'", html).group(1))


def _wait_status(s, run_id, statuses, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = s.jobs.view(run_id)
        if v.status in statuses:
            return v
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} still {s.jobs.view(run_id).status}: "
                         f"{s.jobs.view(run_id).error}")


def _run_id(update):
    return update if isinstance(update, str) else update["value"]


def test_download_with_progress_to_100_then_chat_loads_it(world):
    from studio import hub as H
    from studio.reporting import read_events
    from tabs.chat import service as chat

    s, client = world["s"], world["client"]
    msg, *_ = client.predict("chat", None, "tiny/chat", "auto", api_name="/models_choose")
    assert "not on disk yet" in msg
    with pytest.raises(H.NotOnDisk, match="Models tab"):  # Chat's Load: no silent download
        chat.engine_for(s, chat.ChatConfig())
    msg, picker, *_ = client.predict("chat", None, "", "auto", api_name="/models_download")
    assert msg.startswith("Downloading tiny/chat")
    run_id = _run_id(picker)
    seen = []
    while s.jobs.view(run_id).status in ("queued", "running"):
        status_md, progress, *_ = client.predict(run_id, api_name="/models_job_view")
        seen.append(_percent(progress))
        time.sleep(0.1)
    v = s.jobs.view(run_id)
    assert v.status == "succeeded", v.error
    _, progress, *_ = client.predict(run_id, api_name="/models_job_view")
    seen.append(_percent(progress))
    assert seen == sorted(seen) and seen[-1] == 100.0 and any(0 < p < 100 for p in seen), seen
    events = [e for e in read_events(Path(v.run_dir)) if e["type"] == "progress"]
    done = [e["done"] for e in events]
    assert done == sorted(done) and done[-1] == events[-1]["total"] and len(set(done)) > 3
    assert re.search(r"MiB · [\d.]+ [KM]iB/s · file \d/\d", events[-1]["message"])
    cards = {c["role"]: c for c in client.predict(api_name="/models_cards")[1]}
    assert cards["chat"]["on_disk"] is True and cards["chat"]["size_from"] == "hub"
    served = world["hub"].repos["tiny/chat"].files
    assert cards["chat"]["download_bytes"] == sum(len(d) for d in served.values())
    reply = chat.preload(s, chat.engine_for(s, chat.ChatConfig()))  # what Chat's Load runs
    assert reply.startswith("Loaded **tiny/chat**")
    card = {c["role"]: c for c in client.predict(api_name="/models_cards")[1]}["chat"]
    assert card["vram_measured"] > 0 and "(measured)" in card["fit_text"]  # from the ledger


def test_cancel_mid_download_then_resume_gives_the_same_files(world):
    s, client, hub = world["s"], world["client"], world["hub"]
    client.predict("embedder", None, "slow/model", "auto", api_name="/models_choose")
    _, picker, *_ = client.predict("embedder", None, "", "auto", api_name="/models_download")
    run_id = _run_id(picker)
    # Download with another model picked: it becomes the role's choice, then queues
    msg, second, *_ = client.predict("vlm", None, "tiny/second", "auto",
                                     api_name="/models_download")
    assert "starts after the 1 job(s) ahead of it" in msg  # downloads queue
    assert s.choices["vlm"].source == "tiny/second"
    assert s.jobs.view(_run_id(second)).status == "queued"
    first = 3 * MiB + 32
    deadline = time.monotonic() + 30
    total = 2 * first + len(b'{"model_type": "bert"}')
    while (s.jobs.view(run_id).fraction or 0) * total < first + MiB and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    client.predict(run_id, api_name="/models_cancel")
    v = _wait_status(s, run_id, ("cancelled",), 30)
    assert first < v.fraction * total < 2 * first
    snap = next((world["cache"] / "models--slow--model" / "snapshots").iterdir())
    assert (snap / "model-00001-of-00002.safetensors").exists()
    assert not (snap / "model-00002-of-00002.safetensors").exists()
    assert not list((world["cache"] / "models--slow--model" / "blobs").glob("*.incomplete"))
    cards = {c["role"]: c for c in client.predict(api_name="/models_cards")[1]}
    assert cards["embedder"]["on_disk"] is False  # half a model is not on disk
    assert _wait_status(s, _run_id(second), ("succeeded",), 30)  # the queue moved on
    client.predict(run_id, api_name="/models_resume")
    v = _wait_status(s, run_id, ("succeeded", "failed"), 60)
    assert v.status == "succeeded", v.error
    for name, data in hub.repos["slow/model"].files.items():
        assert hashlib.sha256((snap / name).read_bytes()).digest() == \
            hashlib.sha256(data).digest(), name
    cards = {c["role"]: c for c in client.predict(api_name="/models_cards")[1]}
    assert cards["embedder"]["on_disk"] is True
    # the finished shard was not fetched again; the interrupted one was
    assert hub.bytes_sent["slow/model/model-00001-of-00002.safetensors"] == first
    assert hub.bytes_sent["slow/model/model-00002-of-00002.safetensors"] > first


def test_gated_model_plain_message_then_token_downloads_and_never_leaks(world, caplog):
    from gradio_client.exceptions import AppError

    s, client, hub = world["s"], world["client"], world["hub"]
    caplog.set_level(logging.DEBUG)
    client.predict("reranker", None, "gated/model", "auto", api_name="/models_choose")
    with pytest.raises(AppError) as err:
        client.predict("reranker", None, "", "auto", api_name="/models_download")
    text = str(err.value)
    assert "accept the licence there, then paste a token here" in text
    assert f"{hub.url}/gated/model" in text and "Traceback" not in text
    with pytest.raises(AppError, match="does not look like a hub access token"):
        client.predict("not a token!", api_name="/models_save_token")
    box, state = client.predict(TOKEN, api_name="/models_save_token")
    assert box == "" and TOKEN not in state and "saved" in state
    token_file = Path(s.settings.home) / "secrets" / "hf_token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert token_file.parent.stat().st_mode & 0o777 == 0o700
    _, picker, *_ = client.predict("reranker", None, "", "auto", api_name="/models_download")
    v = _wait_status(s, _run_id(picker), ("succeeded", "failed"), 60)
    assert v.status == "succeeded", v.error
    assert f"Bearer {TOKEN}" in hub.auth_headers_seen()  # the job really used it
    # never in a run folder, a log, the page's config or an API answer
    for p in Path(s.settings.runs_dir).rglob("*"):
        if p.is_file():
            assert TOKEN not in p.read_text(errors="replace"), p
    assert TOKEN not in caplog.text
    import httpx

    assert TOKEN not in httpx.get(f"{world['url']}config").text
    assert TOKEN not in str(client.predict(api_name="/models_cards"))


def test_disk_list_delete_and_the_checks_before_a_download(world, monkeypatch):
    from gradio_client.exceptions import AppError

    from studio import hub as H

    s, client = world["s"], world["client"]
    line, rows, _ = client.predict(api_name="/models_disk")
    repos = [r[0] for r in rows["data"]]
    assert "tiny/chat" in repos and "take **" in line
    msg, *_ = client.predict("tiny/chat", api_name="/models_delete")
    assert msg.startswith("Deleted tiny/chat") and "freed" in msg
    assert "tiny/chat" not in [r[0] for r in client.predict(api_name="/models_disk")[1]["data"]]
    cards = {c["role"]: c for c in client.predict(api_name="/models_cards")[1]}
    assert cards["chat"]["on_disk"] is False
    # a small disk: the download is refused with how much is missing, and nothing is queued
    monkeypatch.setattr(H, "disk_free", lambda path: 1024**3)
    client.predict("embedder", None, "huge/model", "auto", api_name="/models_choose")
    with pytest.raises(AppError, match=r"Not enough disk space.*missing"):
        client.predict("embedder", None, "", "auto", api_name="/models_download")
    assert not s.jobs.queue()
    # will it fit? checked before the download: a chat model bigger than the whole budget
    monkeypatch.setattr(H, "disk_free", lambda path: 10 * 1024**4)
    world["hub"].repos["huge/model"].claimed_sizes["model.safetensors"] = 2 * s.models.budget
    from tabs.models import service

    service._info_cache(s)._data.clear()
    client.predict("chat", None, "huge/model", "auto", api_name="/models_choose")
    with pytest.raises(AppError, match="would not fit once loaded"):
        client.predict("chat", None, "", "auto", api_name="/models_download")
    assert not s.jobs.queue()
