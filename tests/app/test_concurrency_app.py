"""Several sessions on one launched studio, with the production queue settings: Stop ends the
caller's own chat reply and nobody else's, GPU handlers run only as many at once as the card
is given, and status answers while they run."""

from __future__ import annotations

import re
import threading
import time

import pytest

from studio.llm.testing import build_tokenizer, save_chat_model, tiny_model
from tabs.chat.service import PATH
from tests.conftest import launch_studio, stop_studio


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tok = build_tokenizer("llama3.1")
    folder = save_chat_model(tiny_model("llama3.1", tok, seed=2), tok,
                             tmp_path_factory.mktemp("chat") / "model")
    s, app, url = launch_studio(tmp_path_factory.mktemp("home"),
                                tab_modules=["tabs.chat", "tests.app.gputoy"])
    yield s, url, folder
    stop_studio(s, app)


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def _status(url: str) -> tuple[dict, float]:
    """`studio_status` over plain HTTP (gradio_client adds ~0.3 s of its own per call here)."""
    import httpx

    t0 = time.perf_counter()
    r = httpx.post(f"{url}gradio_api/run/studio_status", json={"data": []}, timeout=10)
    return r.json()["data"][0], time.perf_counter() - t0


def _tokens(stats: str) -> int:
    return int(re.search(r"(\d+) tokens ·", stats).group(1))


def test_stop_ends_the_callers_own_reply_and_nobody_elses(app):
    import httpx

    s, url, folder = app
    mine, other = _client(url), _client(url)
    args = ["Tell me a long story", [], PATH, str(folder), "auto", "", "", "", "", False,
            2000, 0, 0.9, 1.0, -1]  # greedy, up to 2000 tokens: many seconds on this CPU
    job = mine.submit(*args, api_name="/chat_send")
    deadline = time.monotonic() + 60
    while len(job.outputs()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(job.outputs()) >= 3, "the reply streams"
    # another session, and a bare HTTP call with no session, cannot stop it
    assert "Nothing is generating" in other.predict(api_name="/chat_stop")
    bare = httpx.post(f"{url}gradio_api/run/chat_stop", json={"data": []}, timeout=10)
    assert bare.status_code == 200 and "Nothing is generating" in bare.text
    time.sleep(0.5)
    assert not job.done(), "someone else's Stop ended this reply"
    shown = len(job.outputs()[-1][0][-1]["content"])
    assert mine.predict(api_name="/chat_stop") == "Stopping…"
    t_stop = time.monotonic()
    chat, stats, _ = job.result(timeout=30)
    assert time.monotonic() - t_stop < 3
    assert "stopped" in stats and _tokens(stats) < 2000
    assert len(chat[-1]["content"]) - shown < 200, "the reply ended within a few tokens"
    # after its own reply ended, this session's Stop finds nothing to stop
    assert "Nothing is generating" in mine.predict(api_name="/chat_stop")


def test_gpu_handlers_run_only_as_many_at_once_as_the_card_allows(app):
    from studio.sessions import GPU_CONCURRENCY

    s, url, _ = app
    clients = [_client(url) for _ in range(5)]
    jobs = [c.submit(f"job{i}", api_name="/toy_gpu_work") for i, c in enumerate(clients)]
    time.sleep(0.5)
    # light handlers do not wait behind the GPU queue (best of 3: this CPU is shared)
    answers = [_status(url) for _ in range(3)]
    assert min(t for _, t in answers) < 0.5 and "CPU only" in answers[0][0]["device"]
    assert [j.result(timeout=60) for j in jobs] == [f"job{i}" for i in range(5)]
    assert s.extras["gputoy"]["peak"] == GPU_CONCURRENCY


def test_status_answers_at_once_during_a_slow_load(app):
    from studio.models import ModelSpec

    s, url, _ = app
    loading = threading.Event()

    def slow(device):
        loading.set()
        time.sleep(2.0)
        return {"weights": 1}

    s.models.register(ModelSpec("slow", load=slow, title="Slow model"))
    holder = []

    def request():
        cm = s.models.use("slow")
        holder.append(cm)
        cm.__enter__()
        cm.__exit__(None, None, None)

    t = threading.Thread(target=request)
    t.start()
    assert loading.wait(10)
    times = []
    for _ in range(3):
        st, seconds = _status(url)
        times.append(seconds)
    assert any(r["key"] == "slow" and r["state"] == "loading" for r in st["ledger"])
    assert min(times) < 0.2, times
    t.join(10)
