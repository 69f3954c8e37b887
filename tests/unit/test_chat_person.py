"""The Chat tab as a person meets it (#19): a failure is said inside the chat and leaves the
message to retry, tools with a model that cannot call them warn and carry on, conversations are
saved per browser (no other browser sees them), regenerate and edit answer again from the
right point, and the stats line says how much memory the model takes."""

from __future__ import annotations

import json

import pytest

from studio.llm import GenerationSettings
from studio.llm.testing import build_tokenizer, save_chat_model, tiny_model
from studio.sessions import ConversationStore
from tabs.chat import service
from tabs.chat.service import PATH, ChatConfig

PLAIN_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat-person")
    tok = build_tokenizer("llama3.1")
    tools = save_chat_model(tiny_model("llama3.1", tok, seed=2), tok, root / "tools")
    plain = save_chat_model(tiny_model("llama3.1", tok, seed=3), tok, root / "plain")
    cfg_path = plain / "tokenizer_config.json"
    conf = json.loads(cfg_path.read_text())
    conf["chat_template"] = PLAIN_TEMPLATE
    cfg_path.write_text(json.dumps(conf))
    for extra in ("chat_template.jinja", "chat_template.json"):
        if (plain / extra).exists():
            (plain / extra).write_text(PLAIN_TEMPLATE if extra.endswith("jinja")
                                       else json.dumps({"chat_template": PLAIN_TEMPLATE}))
    return tools, plain


def test_tools_with_a_model_that_cannot_call_them_warn_and_carry_on(studio, folders):
    _, plain = folders
    cfg = ChatConfig(source=PATH, path=str(plain), use_tools=True,
                     settings=GenerationSettings(temperature=0, max_new_tokens=8))
    final, line = list(service.stream_reply(studio, cfg, [], "What is 2+2?"))[-1]
    notes = [m for m in final if (m.get("metadata") or {}).get("title") == "Note"]
    assert notes and "has no tool template" in notes[0]["content"]
    assert final[-1]["role"] == "assistant" and "tok/s" in line


def test_stats_line_says_the_models_memory(studio, folders):
    tools, _ = folders
    cfg = ChatConfig(source=PATH, path=str(tools),
                     settings=GenerationSettings(temperature=0, max_new_tokens=4))
    _final, line = list(service.stream_reply(studio, cfg, [], "Hi"))[-1]
    assert "in RAM (no GPU)" in line and "model " in line  # CPU: no VRAM, the RAM it takes


def test_conversations_are_saved_per_browser_and_hidden_from_others(tmp_path):
    store = ConversationStore(tmp_path / "chats")
    mine, theirs = store.new_owner(), store.new_owner()
    cid = store.new_id()
    msgs = [{"role": "user", "content": "My secret plan"}, {"role": "assistant", "content": "ok"}]
    store.save(mine, cid, msgs)
    assert store.list(mine) == [(store.list(mine)[0][0], cid)]
    assert store.list(mine)[0][0].startswith("My secret plan")
    assert store.load(mine, cid) == msgs
    assert store.list(theirs) == [] and store.list(None) == []
    with pytest.raises(ValueError):
        store.load(theirs, cid)  # another browser cannot open it, even knowing the id
    with pytest.raises(ValueError):
        store.load(mine, "../" + cid)
    assert mine not in "".join(str(p) for p in (tmp_path / "chats").rglob("*"))
    assert store.delete(mine, cid) and store.list(mine) == []
    # Gradio sends messages back as lists of parts: the title is still the first question
    store.save(mine, store.new_id(), [{"role": "user", "content": [{"type": "text",
                                                                     "text": "Parts here"}]}])
    assert store.list(mine)[0][0].startswith("Parts here")


def test_regenerate_and_edit_answer_again_from_the_right_turn():
    h = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "1"},
         {"role": "user", "content": "two"}, service.error_bubble("failed"),
         {"role": "assistant", "content": "2"}]
    before, prompt = service.regenerate_from(h, 2)
    assert prompt == "two" and before == h[:2]
    before, prompt = service.regenerate_from(h, 4)  # an assistant index walks back
    assert prompt == "two" and before == h[:2]
    before, prompt = service.edit_from(h, 0, "uno")
    assert before == [] and prompt == "uno"
    with pytest.raises(ValueError, match="Only your own"):
        service.edit_from(h, 1, "x")


def test_through_the_app_errors_stay_in_the_chat(tmp_path, folders):
    from gradio_client import Client

    from tests.conftest import launch_studio, stop_studio

    tools, _ = folders
    s, app, url = launch_studio(tmp_path / "home", tab_modules=["tabs.chat"])
    try:
        client = Client(url, verbose=False)
        args = ["Hi there", [], PATH, "", "auto", "", "", "", "Be brief.", False, 16, 0, 0.9,
                1.0, -1]
        # an empty model path: said in the chat, nothing raised, the message kept
        chat, _stats, box = client.predict(*args, api_name="/chat_send")
        assert chat[-1]["metadata"]["title"] == "⚠️ Error" and box == "Hi there"
        assert "Enter a hub id" in str(chat[-1]["content"])
        args[3] = str(tools)
        args[1] = chat  # the failed turn's bubble is not sent to the model again
        chat, stats, box = client.predict(*args, api_name="/chat_send")
        assert [m["role"] for m in chat] == ["user", "assistant"] and box == ""
        assert "tok/s" in stats
    finally:
        stop_studio(s, app)
