"""Issue #19's RAG items through gradio_client, by the documented api_names: a reranker that
cannot be loaded is refused when set (a hub id not on disk points to the Models tab), an answer
that cites nothing shows a related passage and no sources, QA sets with other field names are
mapped (or refused with the schema), short answers are checked exactly, every question's result
comes back, and the QA set used (a generated one too) is a file to download."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import launch_studio, stop_studio
from tests.unit.rag_corpus import QUESTIONS, write_corpus

pytestmark = pytest.mark.slow


class StandInEngine:
    """The chat model's part, scripted: it answers `reply` (without a citation unless the reply
    writes one) and writes `qa` when asked for a question."""

    def __init__(self, reply: str, qa: str = ""):
        self.reply, self.qa = reply, qa

    def stream_chat(self, messages, settings, tools=None, stop_event=None):
        yield SimpleNamespace(kind="text", text=self.reply)
        yield SimpleNamespace(kind="done", text=self.reply)

    def chat(self, messages, settings):
        return SimpleNamespace(text=self.qa)


def _rows(table):
    return table["data"] if isinstance(table, dict) else table


@pytest.fixture(scope="module")
def rag_app(tmp_path_factory):
    from gradio_client import Client, handle_file

    root = tmp_path_factory.mktemp("ragtrust")
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_CACHE", str(root / "empty-hf-cache"))  # no hub model is on disk
    corpus = write_corpus(root / "corpus")
    s, app, url = launch_studio(root / "home", tab_modules=["tabs.rag"])
    try:
        c = Client(url, verbose=False)
        c.predict("notes", api_name="/rag_create_kb")
        md, *_ = c.predict("notes", [handle_file(str(p)) for p in corpus], "", "now",
                           api_name="/rag_ingest")
        assert "Indexed **10** file(s)" in md
        yield c, s, root
    finally:
        stop_studio(s, app)
        mp.undo()


def test_a_reranker_that_cannot_be_loaded_is_refused_when_set(rag_app):
    c, s, root = rag_app
    with pytest.raises(Exception, match="not on disk yet.*Models tab"):
        c.predict("BAAI/bge-reranker-base", api_name="/rag_set_reranker")
    broken = root / "home" / "broken-reranker"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(Exception, match="cannot be loaded"):
        c.predict(str(broken), api_name="/rag_set_reranker")
    with pytest.raises(Exception, match="Reranker unavailable"):  # a message, not "Error"
        c.predict("notes", "guest wifi password", 3, True, True, api_name="/rag_search")
    panel, found = c.predict("notes", "guest wifi password", 3, True, False,
                             api_name="/rag_search")
    assert found["sources"][0]["file"] == "wifi.txt"


def test_an_uncited_answer_shows_a_related_passage_not_sources(rag_app):
    from tabs.rag.service import get_service

    c, s, _ = rag_app
    get_service(s).engine = StandInEngine("The guest wifi password is tangerine-42.")
    chat, box, panel, answer = c.predict(
        "notes", "What is the guest wifi password?", [], 3, True, False, False, 24, 0.0,
        api_name="/rag_ask")
    reply = chat[-1]["content"]
    reply = reply if isinstance(reply, str) else json.dumps(reply)
    assert answer["citations"] == [] and answer["related"], answer
    related = answer["sources"][answer["related"][0] - 1]
    assert related["file"] == "wifi.txt"
    assert "**Sources:**" not in reply and "Related passage" in reply, reply
    assert "✓ cited" not in panel and "related, not cited" in panel
    with pytest.raises(Exception, match="knowledge base"):  # an empty selector: a message
        c.predict(None, "What is the guest wifi password?", [], 3, True, False, False, 24,
                  0.0, api_name="/rag_ask")


def test_evaluation_maps_fields_checks_exactly_and_shows_each_question(rag_app, tmp_path):
    from gradio_client import handle_file

    from tabs.rag.service import get_service

    c, s, _ = rag_app
    # answers cite a passage but get the fact wrong: "tangerine-41" is not "tangerine-42"
    get_service(s).engine = StandInEngine("The password is tangerine-41 [1].")
    qa = tmp_path / "qa-other-names.jsonl"
    qa.write_text("".join(json.dumps({"query": q, "answer": a, "source": src}) + "\n"
                          for (q, src), a in zip(QUESTIONS[:3], ["", "", ""], strict=True)) +
                  json.dumps({"query": "What is the guest wifi password?",
                              "answer": "tangerine-42", "source": "wifi.txt"}) + "\n")
    summary, table, _, _, items, qa_out = c.predict("notes", handle_file(str(qa)), 0, 3, True,
                                                    api_name="/rag_eval")
    assert "4 questions" in summary and "4 with an expected source" in summary, summary
    rows = {r[0]: r for r in _rows(table)}
    assert rows["hybrid"][1] >= 0.75 and rows["hybrid"][5] == 4
    per_q = _rows(items)
    assert len(per_q) == 4
    wifi = [r for r in per_q if r[0] == "What is the guest wifi password?"][0]
    assert wifi[1] == "wifi.txt" and wifi[2] == 1 and wifi[6] == "no (exact)", wifi
    saved = [json.loads(line) for line in Path(qa_out).read_text().splitlines()]
    assert saved[-1] == {"question": "What is the guest wifi password?",
                         "expected_answer": "tangerine-42", "expected_source": "wifi.txt"}

    bad = tmp_path / "qa-unknown.jsonl"
    bad.write_text('{"question": "q1", "gold_passage": "x"}\n')
    with pytest.raises(Exception, match="Expected one JSON object per line.*expected_source"):
        c.predict("notes", handle_file(str(bad)), 0, 3, False, api_name="/rag_eval")


def test_a_generated_qa_set_can_be_downloaded(rag_app):
    from tabs.rag.service import get_service

    c, s, _ = rag_app
    get_service(s).engine = StandInEngine(
        "x", qa="Question: What is the guest wifi password?\nAnswer: tangerine-42")
    summary, _, _, _, items, qa_out = c.predict("notes", None, 2, 3, False,
                                                api_name="/rag_eval")
    assert "generated by the LLM" in summary and len(_rows(items)) == 2
    lines = [json.loads(line) for line in Path(qa_out).read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["question"] == "What is the guest wifi password?"
    assert Path(qa_out).name.startswith("qa-generated-")
