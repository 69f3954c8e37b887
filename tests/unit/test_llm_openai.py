"""The OpenAI-compatible backend against our real server on loopback (no mocks): streaming,
tool calls over the wire, Stop through a closed stream, and clear errors."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from studio.llm import GenerationSettings, LLMError, ModelSource, OpenAIEngine, TransformersEngine
from studio.llm.server import ServerThread, create_app
from studio.llm.testing import save_chat_model, teach, tiny_model, tokenizer_for_examples
from studio.llm.tools import tool_schemas

REPLY = "In Oslo it is snow, -3 C."


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: The city name.
    """
    return {"Oslo": "snow, -3 C"}[city]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny Qwen2.5-template model taught to call get_weather, served on 127.0.0.1."""
    from studio.config import Settings
    from studio.context import build_studio

    schemas = tool_schemas([get_weather])
    ask = [{"role": "user", "content": "Weather in Oslo?"}]
    after = ask + [{"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    ]}, {"role": "tool", "name": "get_weather", "content": "snow, -3 C"}]
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    examples = [(ask, schemas, call), (after, schemas, REPLY),
                (ask, None, "Hello from the server.")]
    tok = tokenizer_for_examples("qwen2.5", examples)
    model = tiny_model("qwen2.5", tok, seed=5)
    assert teach(model, tok, examples) < 0.05
    folder = save_chat_model(model, tok, tmp_path_factory.mktemp("srv") / "model")
    studio = build_studio(Settings(home=tmp_path_factory.mktemp("home"), profile="small"),
                          start_jobs=False)
    local = TransformersEngine(studio, ModelSource(str(folder), title="tiny-tools"))
    server = ServerThread(create_app(local, "tiny-tools"))
    url = server.start()
    yield url, local, ask
    server.stop()
    studio.close()


def test_streaming_chat_through_the_server(served):
    url, local, ask = served
    remote = OpenAIEngine(url, "tiny-tools")
    assert remote.list_models() == ["tiny-tools"]
    events = list(remote.stream_chat(ask, GenerationSettings(temperature=0, max_new_tokens=30)))
    texts = [e.text for e in events if e.kind == "text"]
    done = events[-1]
    assert done.text == "Hello from the server."
    assert len(texts) >= 3, "text arrives as a stream of deltas"
    assert "".join(texts) == done.text
    assert done.stats.new_tokens >= 3 and done.stats.prompt_tokens > 0
    # same answer as the local engine it serves
    assert local.chat(ask, GenerationSettings(temperature=0, max_new_tokens=30)).text == done.text


def test_tool_loop_over_the_wire(served):
    url, _, ask = served
    remote = OpenAIEngine(url, "tiny-tools")
    calls = []

    def logged(city: str) -> str:
        """Get the current weather in a city.

        Args:
            city: The city name.
        """
        calls.append(city)
        return get_weather(city)

    logged.__name__ = "get_weather"
    result = remote.chat(ask, GenerationSettings(temperature=0, max_new_tokens=60),
                         tools=[logged])
    assert calls == ["Oslo"]
    assert [c.result for c in result.tool_calls] == ["snow, -3 C"]
    assert result.text == REPLY
    assert [m["role"] for m in result.messages] == ["user", "assistant", "tool", "assistant"]


def test_stop_closes_the_stream_and_the_server_stops(served):
    url, local, _ = served
    remote = OpenAIEngine(url, "tiny-tools")
    stop = threading.Event()
    n = 0
    done = None
    long_ask = [{"role": "user", "content": "Tell me a very long story about Oslo."}]
    with local.studio.models.use(local.key) as llm:
        # The tiny model may end its story on its own after a few tokens, before the client's
        # Stop reaches the server: for this test it cannot end (no end-of-turn token) and
        # writes 30 ms per token, so only the Stop can end it before 400 tokens.
        slow = llm.model.get_input_embeddings().register_forward_pre_hook(
            lambda *_: time.sleep(0.03))  # every decode path embeds each new token
        eos, llm.eos_ids = llm.eos_ids, frozenset()
    try:
        for ev in remote.stream_chat(long_ask, GenerationSettings(temperature=1.0, seed=1,
                                                                  max_new_tokens=400),
                                     stop_event=stop):
            if ev.kind == "text":
                n += 1
                if n == 2:
                    stop.set()
            elif ev.kind == "done":
                done = ev
    finally:
        slow.remove()
        llm.eos_ids = eos
    assert done.stats.stopped
    # the server-side generation ended too, early, not after all 400 tokens
    llm = local.studio.models.get_loaded(local.key)
    assert llm.lock.acquire(timeout=10)
    llm.lock.release()
    assert local.last_stats.stopped and local.last_stats.new_tokens < 400


def test_server_errors_are_clear(served):
    url, _, _ = served
    r = httpx.post(f"{url}/chat/completions", json={"model": "x", "messages": []})
    assert r.status_code == 400 and "messages is empty" in r.json()["error"]["message"]
    with pytest.raises(LLMError, match="Cannot reach"):
        OpenAIEngine("http://127.0.0.1:9/v1", "m").chat([{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="not a server URL"):
        OpenAIEngine("localhost:8000", "m")
