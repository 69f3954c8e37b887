"""Issue #19 (RAG) and #18 (no silent download in a request), at the logic level:

- a reranker that cannot be loaded is refused when it is set, with the reason; a profile's hub
  reranker that is not on disk is reported unavailable and never loaded (no hub on each warm-up);
  one that fails in a search gives a plain message once and is not retried;
- embedders and rerankers given as hub ids load from the hub cache, or say "Models tab";
- an answer that cites nothing has no citations (a word-overlap match is a "related passage")
  and the evaluation does not count it as cited;
- QA sets with other field names are mapped, or refused with the expected schema; short
  expected answers are checked exactly ("0.22.0" is not "0.26.0").
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from studio.config import Settings
from studio.context import build_studio
from studio.hub import NotOnDisk
from tabs.rag import embedders
from tabs.rag.answer import Answer, finish
from tabs.rag.config import RetrievalConfig
from tabs.rag.evaluation import QAItem, evaluate, rubric
from tabs.rag.index import ChunkRecord
from tabs.rag.retrieval import Hit, SearchResult
from tabs.rag.service import get_service
from tabs.rag.ui import _sources_footer, sources_html
from tests.unit.rag_corpus import FILES, write_corpus

HUB_RERANKER = "BAAI/bge-reranker-base"  # the full profile's reranker


@pytest.fixture
def svc(tmp_path, empty_cache):
    studio = build_studio(Settings(home=tmp_path / "home", profile="small"), start_jobs=False)
    yield get_service(studio)
    studio.close()


@pytest.fixture
def loads(monkeypatch):
    """Every reranker/embedder load, recorded (the real loader still runs)."""
    seen: list[tuple[str, str]] = []
    real_r, real_e = embedders.load_reranker, embedders.load_embedder

    def rr(source, device="cpu"):
        seen.append(("reranker", source))
        return real_r(source, device)

    def emb(source, device="cpu"):
        seen.append(("embedder", source))
        return real_e(source, device)

    monkeypatch.setattr(embedders, "load_reranker", rr)
    monkeypatch.setattr(embedders, "load_embedder", emb)
    return seen


def _tiny_cross_encoder(folder):
    from tests.unit.test_rag_search_answer import _tiny_cross_encoder as make

    return make(folder)


def _in_cache(cache, repo, folder):
    """`folder` as huggingface_hub lays out a downloaded snapshot of `repo` in `cache`."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    storage = cache / f"models--{repo.replace('/', '--')}"
    snap = storage / "snapshots" / sha
    snap.mkdir(parents=True)
    for f in Path(folder).iterdir():  # links, as the hub cache's snapshots are
        (snap / f.name).symlink_to(f.resolve())
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(sha)
    return storage / "snapshots" / sha


# ----- the reranker ------------------------------------------------------------------------------
def test_a_hub_reranker_not_on_disk_is_refused_at_once_and_points_to_the_models_tab(svc, loads):
    with pytest.raises(NotOnDisk, match="not on disk.*Models tab"):
        svc.set_reranker(HUB_RERANKER)
    assert svc.reranker_source is None and svc.reranker_status()[0] is False
    assert loads == [], "nothing was loaded (or fetched)"


def test_a_reranker_folder_that_cannot_be_loaded_is_refused_and_the_previous_one_stays(
        svc, tmp_path, loads):
    good = _tiny_cross_encoder(tmp_path / "ce")
    svc.set_reranker(str(good))
    assert svc.reranker_status() == (True, "reranker: ce")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "bert"}))  # no weights
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="the reranker .*broken cannot be loaded"):
        svc.set_reranker(str(broken))
    assert time.monotonic() - t0 < 30
    assert svc.reranker_source == str(good), "a failed choice does not replace a working one"
    assert [k for k, _ in loads] == ["reranker", "reranker"]


def test_a_hub_reranker_on_disk_loads_from_the_cache(svc, tmp_path, empty_cache, loads):
    snap = _in_cache(empty_cache, "acme/tiny-reranker", _tiny_cross_encoder(tmp_path / "ce"))
    svc.set_reranker("acme/tiny-reranker")
    assert svc.reranker_source == "acme/tiny-reranker" and svc.reranker_status()[0]
    assert loads == [("reranker", str(snap))], "loaded from the snapshot folder, not the hub"


def test_the_profiles_hub_reranker_not_on_disk_is_unavailable_and_never_loaded(
        svc, tmp_path, loads):
    """The full profile names a hub reranker: while it is not downloaded, warming up (each
    focus of the Question box) and searching never try to load or fetch it."""
    svc.reranker_source = HUB_RERANKER  # as the full profile's choice sets it
    ok, note = svc.reranker_status()
    assert not ok and "Models tab" in note
    paths = write_corpus(tmp_path / "corpus")
    svc.ingest("notes", [str(p) for p in paths[:3]], background=False)
    t0 = time.monotonic()
    for _ in range(3):
        steps = svc.warm("notes")
        assert "reranker" not in steps
    assert time.monotonic() - t0 < 20
    assert [k for k, _ in loads] == ["embedder"], "the reranker was never loaded"
    with pytest.raises(ValueError, match="Reranker unavailable.*Models tab"):
        svc.search("notes", "tomatoes", RetrievalConfig(rerank=True))
    assert svc.search("notes", "tomatoes", RetrievalConfig(rerank=False)).hits


def test_a_reranker_that_fails_in_a_search_says_so_plainly_once(svc, tmp_path, loads):
    """A reranker folder that breaks after it was chosen (deleted, replaced): the search says
    what is wrong in words, and later warm-ups and searches do not retry the load."""
    svc.reranker_source = str(tmp_path / "gone")  # a profile choice or a folder since removed
    paths = write_corpus(tmp_path / "corpus")
    svc.ingest("notes", [str(p) for p in paths[:3]], background=False)
    with pytest.raises(ValueError, match="Reranker unavailable: the reranker .*gone cannot be "
                                         "loaded"):
        svc.search("notes", "tomatoes", RetrievalConfig(rerank=True))
    assert svc.reranker_status()[0] is False
    svc.warm("notes")
    with pytest.raises(ValueError, match="cannot be loaded"):
        svc.search("notes", "tomatoes", RetrievalConfig(rerank=True))
    assert [k for k, _ in loads].count("reranker") == 1, "not retried"
    svc.set_reranker(None)
    assert svc.reranker_status()[0] is False and svc.reranker_source is None


# ----- the embedder ------------------------------------------------------------------------------
def test_a_hub_embedder_not_on_disk_says_models_tab_instead_of_downloading(svc, tmp_path, loads):
    from dataclasses import replace

    choice = svc.studio.choices["embedder"]
    svc.studio.choices["embedder"] = replace(choice, source="BAAI/bge-small-en-v1.5")
    paths = write_corpus(tmp_path / "corpus")
    with pytest.raises(NotOnDisk, match="embedder.*not on disk.*Models tab"):
        svc.ingest("hubkb", [str(p) for p in paths[:2]], background=False)
    with pytest.raises(NotOnDisk, match="Models tab"):  # nor a job that would download it
        svc.ingest("hubkb", [str(p) for p in paths[:2]], background=True)
    assert loads == [] and svc.studio.jobs.list_runs() == []


def test_a_hub_embedder_on_disk_is_loaded_from_the_cache(svc, tmp_path, empty_cache, loads):
    from dataclasses import replace

    minilm = svc.studio.choices["embedder"].source  # the offline all-MiniLM-L6-v2 folder
    snap = _in_cache(empty_cache, "sentence-transformers/all-MiniLM-L6-v2", minilm)
    svc.studio.choices["embedder"] = replace(svc.studio.choices["embedder"],
                                             source="sentence-transformers/all-MiniLM-L6-v2")
    paths = write_corpus(tmp_path / "corpus")
    res = svc.ingest("hubkb", [str(p) for p in paths[:2]], background=False)
    assert len(res.indexed) == 2 and loads == [("embedder", str(snap))]


# ----- citations ---------------------------------------------------------------------------------
def _hit(path: str, text: str) -> Hit:
    return Hit(ChunkRecord(id=path, path=path, heading="", start_line=1, end_line=3, text=text),
               score=1.0, similarity=0.8, relevant=True)


HITS = [_hit("car.txt", FILES["car.txt"]), _hit("wifi.txt", FILES["wifi.txt"])]


def test_an_answer_that_cites_nothing_has_no_citations_only_a_related_passage():
    ans = finish("The guest wifi password is tangerine-42.", HITS)
    assert ans.citations == [] and ans.cited_hits() == []
    assert ans.related == [2] and ans.text == "The guest wifi password is tangerine-42."
    assert any("cites no passage" in n for n in ans.notices)
    footer = _sources_footer(HITS, ans.citations, ans.related)
    assert "Sources:" not in footer and "Related passage" in footer and "wifi.txt" in footer
    panel = sources_html(HITS, ans.citations, ans.related)
    assert "cited" in panel and "✓ cited" not in panel and "related, not cited" in panel
    cited = finish("It is tangerine-42 [2].", HITS)
    assert cited.citations == [2] and cited.related == []
    assert "**Sources:** [2] `wifi.txt" in _sources_footer(HITS, cited.citations, cited.related)


def test_the_evaluation_does_not_count_a_related_passage_as_a_citation():
    item = QAItem("What is the guest wifi password?", "tangerine-42", "wifi.txt")
    uncited = finish("The guest wifi password is tangerine-42.", HITS)
    cited = finish("The guest wifi password is tangerine-42 [2].", HITS)
    assert rubric(cited, item) == 1.0
    assert rubric(uncited, item) == pytest.approx(1 / 3), "right words, but nothing cited"

    def search_with(cfg):
        return lambda q: SearchResult(q, HITS)

    run = evaluate([item], search_with, k=3, rerank_available=False,
                   answer_fn=lambda q: finish("The password is tangerine-42.", HITS),
                   answer_config="hybrid")
    from tabs.rag.evaluation import question_rows

    [detail] = run.items
    assert detail["citations"] == [] and detail["related"] == ["wifi.txt:1-3"]
    [row] = question_rows(run)
    assert row[5].startswith("none (related")


# ----- QA sets -----------------------------------------------------------------------------------
def test_qa_sets_with_other_field_names_are_mapped():
    from tabs.rag.evaluation import parse_qa

    text = "\n".join(json.dumps(o) for o in [
        {"query": "What is the guest wifi password?", "answer": "tangerine-42",
         "source": "wifi.txt"},
        {"question": "Tire pressure?", "ground_truth": "2.4 bar", "file": "car.txt", "id": 7},
        {"question": "Oil change?", "answers": {"text": ["45000 km"]}, "sources": ["car.txt"]},
    ])
    items, notes = parse_qa(text)
    assert [(i.question, i.expected_answer, i.expected_source) for i in items] == [
        ("What is the guest wifi password?", "tangerine-42", "wifi.txt"),
        ("Tire pressure?", "2.4 bar", "car.txt"),
        ("Oil change?", "45000 km", "car.txt")]
    assert any("answer" in n and "source" in n for n in notes)
    assert any("Ignored QA fields: id" in n for n in notes)
    as_list, _ = parse_qa(json.dumps([{"question": "q", "answer": "a"}]))  # a .json file
    assert as_list[0].expected_answer == "a"


def test_a_qa_set_with_nothing_to_score_is_refused_with_the_expected_schema():
    from tabs.rag.evaluation import parse_qa

    with pytest.raises(ValueError, match='no expected answers or sources.*"expected_source"'):
        parse_qa('{"question": "q1", "gold_passage_id": "x"}\n{"question": "q2"}\n')
    with pytest.raises(ValueError, match='line 1 has no question.*fields: prompt_text.*'
                                         '"question"'):
        parse_qa('{"prompt_text": "q1", "answer": "a"}\n')


def test_short_expected_answers_are_checked_exactly():
    from tabs.rag.evaluation import answer_correct

    assert answer_correct("The current release is 0.22.0 [1].", "0.26.0") == (False, "exact")
    assert answer_correct("The current release is 0.26.0 [1].", "0.26.0") == (True, "exact")
    assert answer_correct("Use port 8731.", "The metrics server uses port 8731")[0] is True
    assert answer_correct("Port 8713.", "The metrics server uses port 8731")[0] is False
    assert answer_correct("It is Lighthouse.", "Lighthouse")[0] is True
    assert answer_correct("It is Seagull.", "Lighthouse")[0] is False
    long = ("Turn the compost heap every three weeks and keep it moist, covered, and away "
            "from the tomatoes")
    assert answer_correct("Turn the compost heap every three weeks, keep it covered.",
                          long) == (True, "words")
    item = QAItem("Which version is current?", "0.26.0", "CHANGELOG.md")
    hits = [_hit("CHANGELOG.md", "## 0.26.0\n\nCurrent release.\n\n## 0.22.0\n\nOld.")]
    wrong = finish("The current version is 0.22.0 [1].", hits)
    assert rubric(wrong, item) == pytest.approx(2 / 3), "cited the right file, wrong version"
    right = finish("The current version is 0.26.0 [1].", hits)
    assert rubric(right, item) == 1.0


def test_an_evaluation_without_sources_reports_no_retrieval_numbers():
    run = evaluate([QAItem("q", "an answer", "")], lambda cfg: (lambda q: SearchResult(q, [])),
                   k=3, rerank_available=False)
    assert all(r.hit_at_k is None and r.mrr is None and r.n == 0 for r in run.rows)


def test_answer_as_dict_has_related_not_attributed():
    d = Answer("x", [], related=[1]).as_dict()
    assert d["related"] == [1] and "attributed" not in d


def test_the_related_passage_line_is_not_sent_back_to_the_model_as_its_words():
    from tabs.rag.answer import plain_history

    ans = finish("The guest wifi password is tangerine-42.", HITS)
    shown = ans.text + _sources_footer(HITS, ans.citations, ans.related)
    assert plain_history([{"role": "user", "content": "Wifi password?"},
                          {"role": "assistant", "content": shown}], 4)[-1] == \
        {"role": "assistant", "content": "The guest wifi password is tangerine-42."}


def test_two_evaluations_in_one_second_list_the_newer_last(tmp_path):
    """The Evaluate tab shows runs[-1]: a second run in the same second is saved as
    "<second>-2.json", which sorts before "<second>.json" by name."""
    from tabs.rag.evaluation import EvalRun, load_runs, save_run

    first = EvalRun(id="20261202-093330", created=100.0, k=3, qa_source="first", rows=[])
    second = EvalRun(id="20261202-093330", created=100.5, k=3, qa_source="second", rows=[])
    save_run(tmp_path, first)
    save_run(tmp_path, second)
    assert second.id == "20261202-093330-2"
    assert [r.qa_source for r in load_runs(tmp_path)] == ["first", "second"]
