"""The Chat tab: its logic streams a reply as chatbot messages with stats, Stop works per
session, the demo tools compute, and the launched app answers `chat_send` over gradio_client."""

from __future__ import annotations

import threading

import pytest

from studio.llm import GenerationSettings
from studio.llm.testing import build_tokenizer, save_chat_model, tiny_model
from tabs.chat import service
from tabs.chat.service import PATH, ChatConfig


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    tok = build_tokenizer("llama3.1")
    return save_chat_model(tiny_model("llama3.1", tok, seed=2), tok,
                           tmp_path_factory.mktemp("chat") / "model")


def test_reply_streams_into_the_chatbot_with_stats(studio, model_folder):
    cfg = ChatConfig(source=PATH, path=str(model_folder),
                     settings=GenerationSettings(temperature=0, max_new_tokens=24))
    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "ok"}]
    updates = list(service.stream_reply(studio, cfg, history, "Hello"))
    lengths = [len(u[0][-1]["content"]) for u in updates]
    assert lengths == sorted(lengths) and len(set(lengths)) > 3, "the answer grows as it streams"
    final, line = updates[-1]
    assert [m["role"] for m in final] == ["user", "assistant", "user", "assistant"]
    assert final[-1]["content"]
    assert "tok/s" in line and "first token" in line
    with pytest.raises(ValueError, match="Type a message"):
        list(service.stream_reply(studio, cfg, [], "  "))


def test_stop_button_flag_stops_that_session_only(studio, model_folder):
    flags = studio.stops
    cfg = ChatConfig(source=PATH, path=str(model_folder),
                     settings=GenerationSettings(temperature=0, max_new_tokens=300))
    n, last = 0, ""
    with flags.running("chat", "a") as mine, flags.running("chat", "b") as other:
        for _shown, last in service.stream_reply(studio, cfg, [], "Go on", mine):  # noqa: B007
            n += 1
            if n == 3:
                assert flags.stop("chat", "a")
    assert "stopped" in last and not other.is_set()
    assert n < 10


def test_demo_tools():
    assert service.calculate("(17 * 23) / 4") == pytest.approx(97.75)
    with pytest.raises(ValueError, match="not plain arithmetic"):
        service.calculate("__import__('os').system('true')")
    assert "unknown time zone" in service.current_time("Mars/Olympus")
    assert service.current_time("UTC").endswith("UTC")


def test_chat_send_through_the_launched_app(tmp_path, model_folder):
    from gradio_client import Client

    from tests.conftest import launch_studio, stop_studio

    s, app, url = launch_studio(tmp_path / "home", tab_modules=["tabs.chat"])
    try:
        client = Client(url, verbose=False)
        args = ["Hi there", [], PATH, str(model_folder), "auto", "", "", "", "Be brief.", False,
                16, 0, 0.9, 1.0, -1]
        chat, stats, box = client.predict(*args, api_name="/chat_send")
        assert chat[-1]["role"] == "assistant" and chat[-1]["content"]
        assert "tok/s" in stats and box == ""
        bad = list(args)
        bad[3] = str(tmp_path / "missing")
        # a failure is said inside the chat (no red overlays), the message kept to retry
        chat, _stats, box = client.predict(*bad, api_name="/chat_send")
        assert "No such model file or folder" in str(chat[-1]["content"]) and box == "Hi there"
        assert "Nothing is generating" in client.predict(api_name="/chat_stop")
    finally:
        stop_studio(s, app)


def test_chat_tab_logic_has_no_gradio():
    import ast
    from pathlib import Path

    import studio.llm as llm_pkg

    files = list(Path(llm_pkg.__file__).parent.glob("*.py"))
    files.append(Path(service.__file__))
    for f in files:
        tree = ast.parse(f.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, (ast.Import, ast.ImportFrom))
                 for a in (n.names if isinstance(n, ast.Import) else [ast.alias(n.module or "")])}
        assert "gradio" not in names, f


def test_stop_flags_are_thread_safe():
    from contextlib import ExitStack

    from studio.sessions import StopFlags

    flags = StopFlags()
    events = []
    with ExitStack() as stack:
        threads = [threading.Thread(target=lambda i=i: events.append(
            stack.enter_context(flags.running("chat", f"s{i}")))) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(flags.stop("chat", f"s{i}") for i in range(20))
        assert all(e.is_set() for e in events)
        assert not flags.stop("chat", "nobody") and not flags.stop("chat", None)
    assert not flags.stop("chat", "s0"), "a finished request leaves no flag behind"
