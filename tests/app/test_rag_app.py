"""The RAG tab through gradio_client: create, ingest, list sources, search, ask, delete,
evaluate, all by their documented api_names."""

from __future__ import annotations

import pytest

from tabs.rag.evaluation import QAItem, qa_jsonl
from tests.conftest import launch_studio, stop_studio
from tests.unit.rag_corpus import QUESTIONS, write_corpus

pytestmark = pytest.mark.slow


def _rows(table):
    """Rows of a Dataframe output as gradio_client returns it."""
    return table["data"] if isinstance(table, dict) else table


def test_ingest_ask_and_sources_over_the_api(tmp_path):
    from gradio_client import Client, handle_file

    from studio.llm import ModelSource, TransformersEngine
    from studio.llm.testing import build_tokenizer, save_chat_model, tiny_model
    from tabs.rag.service import get_service

    corpus = write_corpus(tmp_path / "corpus")
    (tmp_path / "corpus" / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    qa = tmp_path / "qa.jsonl"
    qa.write_text(qa_jsonl([QAItem(q, "", src) for q, src in QUESTIONS[:4]]))
    tok = build_tokenizer("qwen2.5")  # a tiny random chat model keeps this test quick; the
    chat_dir = save_chat_model(tiny_model("qwen2.5", tok), tok, tmp_path / "chat")  # real one
    s, app, url = launch_studio(tmp_path / "home", tab_modules=["tabs.rag"])  # is unit-tested
    try:
        get_service(s).engine = TransformersEngine(s, ModelSource(str(chat_dir), title="tiny"))
        c = Client(url, verbose=False)
        assert c.predict("notes", api_name="/rag_create_kb")[0]["value"] == "notes"
        uploads = [handle_file(str(p)) for p in corpus] + \
            [handle_file(str(tmp_path / "corpus" / "photo.png"))]
        md, skipped, sources, *_ = c.predict("notes", uploads, "", "now",
                                             api_name="/rag_ingest")
        assert "Indexed **10** file(s)" in md
        assert [r[0] for r in _rows(skipped)] == ["photo.png"] and "binary" in \
            _rows(skipped)[0][1]
        listed = _rows(c.predict("notes", api_name="/rag_sources"))
        assert len(listed) == 11
        assert {r[0] for r in listed if r[2] == "indexed"} == {p.name for p in corpus}

        panel, found = c.predict("notes", "guest wifi password", 3, True, False,
                                 api_name="/rag_search")
        assert found["sources"][0]["file"] == "wifi.txt" and "rag-src-1" in panel

        chat, box, panel, answer = c.predict(
            "notes", "What is the guest wifi password?", [], 3, True, False, False, 24, 0.0,
            api_name="/rag_ask")
        assert box == "" and chat[0]["role"] == "user" and chat[-1]["role"] == "assistant"
        assert answer["sources"][0]["file"] == "wifi.txt"
        assert answer["sources"][0]["start_line"] >= 1 and "tangerine-42" in \
            answer["sources"][0]["text"]
        assert "wifi.txt" in panel
        chat2, _, _, follow = c.predict(  # a follow-up turn with the chat so far
            "notes", "And what is the network called?", chat, 3, True, False, False, 24, 0.0,
            api_name="/rag_ask")
        assert len(chat2) == len(chat) + 2 and chat2[-2]["role"] == "user"
        assert any(src["file"] == "wifi.txt" for src in follow["sources"])

        _, _, _, idk = c.predict("notes", "What is the capital of Mongolia?", [], 3, True,
                                 False, False, 24, 0.0, api_name="/rag_ask")
        assert idk["idk"] and idk["sources"] == []

        msg, after, _ = c.predict("notes", "car.txt", api_name="/rag_delete_source")
        assert "Deleted **car.txt**" in msg and "car.txt" not in [r[0] for r in _rows(after)]
        with pytest.raises(Exception, match="no source"):
            c.predict("notes", "nope.md", api_name="/rag_delete_source")

        summary, table, *_ = c.predict("notes", handle_file(str(qa)), 0, 3, False,
                                         api_name="/rag_eval")
        assert "4 questions" in summary
        rows = {r[0]: r for r in _rows(table)}
        assert rows["hybrid"][1] >= 0.75  # car.txt was deleted: that question can miss
    finally:
        stop_studio(s, app)
