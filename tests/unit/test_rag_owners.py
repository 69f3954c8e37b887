"""Knowledge bases are per owner: a shared link is several strangers at once, and one never
sees, searches, changes or evaluates another's notes. Real embedder on CPU (all-MiniLM)."""

from __future__ import annotations

import pytest

from studio.config import Settings
from studio.context import build_studio
from tabs.rag.evaluation import QAItem, qa_jsonl
from tabs.rag.service import get_service

ALICE, BOB = "b" + "a" * 31, "b" + "0b" * 15 + "b"  # owner ids as studio.sessions makes them


@pytest.fixture(scope="module")
def rag(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rag-owners")
    studio = build_studio(Settings(home=tmp / "home", profile="small"), start_jobs=False)
    svc = get_service(studio)
    notes = tmp / "notes"
    notes.mkdir()
    (notes / "alice.md").write_text("# Wifi\n\nThe guest wifi password is tangerine-42.\n")
    (notes / "bob.md").write_text("# Wifi\n\nThe guest wifi password is walnut-77.\n")
    (notes / "shared.md").write_text("# Office\n\nThe office opens at eight in the morning.\n")
    svc.ingest("notes", [str(notes / "alice.md")], background=False, owner=ALICE)
    svc.ingest("private", [str(notes / "alice.md")], background=False, owner=ALICE)
    svc.ingest("notes", [str(notes / "bob.md")], background=False, owner=BOB)
    svc.ingest("handbook", [str(notes / "shared.md")], background=False)  # service level
    yield studio, svc, tmp
    studio.close()


def _text(svc, kb, owner):
    return " ".join(h.chunk.text for h in svc.search(kb, "guest wifi password",
                                                       owner=owner).hits)


def test_two_owners_each_have_their_own_notes_under_one_name(rag):
    _, svc, _ = rag
    assert svc.list_kbs(ALICE) == ["notes", "private", "handbook"]
    assert svc.list_kbs(BOB) == ["notes", "handbook"], "bob never sees alice's knowledge bases"
    assert "tangerine-42" in _text(svc, "notes", ALICE) and \
        "walnut-77" not in _text(svc, "notes", ALICE)
    assert "walnut-77" in _text(svc, "notes", BOB) and \
        "tangerine-42" not in _text(svc, "notes", BOB)
    assert [r[0] for r in svc.source_rows("notes", owner=BOB)] == ["bob.md"]
    assert svc.kb("notes", owner=ALICE).manifest["owner"] == ALICE, "stored with the KB"
    assert svc.list_kbs() == ["handbook"], "service level: the shared ones"


def test_another_owners_knowledge_base_is_refused_as_if_it_did_not_exist(rag, tmp_path):
    _, svc, _ = rag
    qa = tmp_path / "qa.jsonl"
    qa.write_text(qa_jsonl([QAItem("What is the guest wifi password?", "", "alice.md")]))
    refused = [
        lambda: svc.search("private", "wifi", owner=BOB),
        lambda: svc.sources("private", owner=BOB),
        lambda: svc.read_source("private", "alice.md", 1, 3, owner=BOB),
        lambda: svc.delete_source("private", "alice.md", owner=BOB),
        lambda: svc.check("private", owner=BOB),
        lambda: svc.delete_kb("private", owner=BOB),
        lambda: svc.evaluate("private", str(qa), owner=BOB),
        lambda: svc.eval_runs("private", owner=BOB),
        lambda: svc.warm("private", owner=BOB),
        lambda: svc.answer_stream("private", "wifi?", [], owner=BOB),
    ]
    for call in refused:
        with pytest.raises(ValueError, match=r"^No knowledge base 'private'\.$"):
            call()
    with pytest.raises(ValueError, match=r"^No knowledge base 'missing'\.$"):
        svc.search("missing", "wifi", owner=BOB)  # the same words for one that does not exist
    # alice's is untouched, and still hers
    assert [r[0] for r in svc.source_rows("private", owner=ALICE)] == ["alice.md"]
    assert "tangerine-42" in _text(svc, "private", ALICE)


def test_evaluation_runs_belong_to_the_knowledge_bases_owner(rag, tmp_path):
    _, svc, _ = rag
    qa = tmp_path / "qa.jsonl"
    qa.write_text(qa_jsonl([QAItem("What is the guest wifi password?", "", "alice.md")]))
    run = svc.evaluate("notes", str(qa), k=1, owner=ALICE)
    assert [r.id for r in svc.eval_runs("notes", owner=ALICE)] == [run.id]
    assert svc.eval_runs("notes", owner=BOB) == [], "bob's 'notes' has no runs of alice's"


def test_shared_knowledge_base_is_read_by_all_and_changed_by_no_page(rag, tmp_path):
    _, svc, _ = rag
    hit = svc.search("handbook", "When does the office open?", owner=BOB).hits[0]
    assert hit.chunk.path == "shared.md"
    assert svc.search("handbook", "office", owner=None).hits, "a page without a session reads"
    new = tmp_path / "more.md"
    new.write_text("# More\n\nSomething else.\n")
    qa = tmp_path / "qa.jsonl"
    qa.write_text(qa_jsonl([QAItem("When does the office open?", "", "shared.md")]))
    for call in (lambda: svc.ingest("handbook", [str(new)], background=False, owner=ALICE),
                 lambda: svc.delete_source("handbook", "shared.md", owner=ALICE),
                 lambda: svc.delete_kb("handbook", owner=ALICE),
                 lambda: svc.check("handbook", owner=ALICE),
                 lambda: svc.evaluate("handbook", str(qa), owner=ALICE)):
        with pytest.raises(ValueError, match="shared"):
            call()
    with pytest.raises(ValueError, match="shared knowledge base"):
        svc.create_kb("handbook", owner=ALICE)
    for call in (lambda: svc.create_kb("mine", owner=None),
                 lambda: svc.delete_source("handbook", "shared.md", owner=None)):
        with pytest.raises(ValueError, match="no session"):
            call()
    assert [r[0] for r in svc.source_rows("handbook")] == ["shared.md"], "unchanged"


def test_owners_delete_only_their_own(rag, tmp_path):
    _, svc, _ = rag
    f = tmp_path / "tmp.md"
    f.write_text("# Temp\n\nA temporary note about kites.\n")
    svc.ingest("scratch", [str(f)], background=False, owner=ALICE)
    svc.ingest("scratch", [str(f)], background=False, owner=BOB)
    svc.delete_kb("scratch", owner=BOB)
    assert "scratch" not in svc.list_kbs(BOB) and "scratch" in svc.list_kbs(ALICE)
    assert svc.search("scratch", "kites", owner=ALICE).hits, "alice's collection is intact"
    svc.delete_kb("scratch", owner=ALICE)
    assert "scratch" not in svc.list_kbs(ALICE)


def test_a_background_ingest_is_the_owners_run(rag, tmp_path):
    studio, svc, _ = rag
    f = tmp_path / "bg.md"
    f.write_text("# Kites\n\nKites fly best in autumn.\n")
    res = svc.ingest("notes", [str(f)], background=True, owner=ALICE)
    assert studio.jobs.view(res.run_id, owner=ALICE).owner == ALICE
    with pytest.raises(KeyError):
        studio.jobs.view(res.run_id, owner=BOB)
    studio.jobs.cancel(res.run_id)
