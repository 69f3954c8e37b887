"""One copy per weights (#19, "three 513 MiB copies in the ledger"): an engine keys its model by
what "auto" loads as on this device, so the same weights asked for as "auto" by one tab (the QLoRA
chat) and by name by another (the Chat tab's "gguf", "fp32" on a CPU) share one entry."""

from __future__ import annotations


def test_auto_and_what_it_becomes_share_one_model_key(studio, tmp_path):
    from studio.llm.engine import ModelSource, TransformersEngine
    from studio.llm.testing import build_tokenizer, save_chat_model, tiny_model

    tok = build_tokenizer("qwen2.5")
    folder = save_chat_model(tiny_model("qwen2.5", tok), tok, tmp_path / "m")
    auto = TransformersEngine(studio, ModelSource(str(folder), "auto", title="QLoRA base"))
    named = TransformersEngine(studio, ModelSource(str(folder), "fp32", title="Chat"))
    assert studio.probe.device == "cpu"
    assert auto.key == named.key
    other = TransformersEngine(studio, ModelSource(str(folder), "fp16"))
    assert other.key != auto.key  # really loaded differently: its own entry
