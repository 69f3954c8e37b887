"""A RAG ingest killed (SIGKILL) at each step of its writes: after each batch's chunks are
upserted, after its manifest save, after it deleted the replaced chunks. After the "restart"
(a fresh process opening the knowledge base) the sources table and the indexes agree, search
answers only from listed sources, delete works, and re-ingesting an edited file leaves only the
new text and no orphan chunk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tabs.rag.config import RetrievalConfig
from tabs.rag.retrieval import search
from tests.jobs.rag_crash_child import encode, ingest, open_kb

ROOT = Path(__file__).resolve().parents[2]
FILES = 9  # three batches of three


def write_notes(folder: Path, edited: dict[int, str] | None = None) -> None:
    folder.mkdir(exist_ok=True)
    for k in range(FILES):
        text = (edited or {}).get(k) or f"# Boat {k}\n\nThe boat named vessel{k} is moored at " \
                                          f"berth{k} next to the old crane.\n"
        (folder / f"f{k}.md").write_text(text)


def child(indexes: Path, folder: Path, crash_at: str | None, *extra: str) -> int:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("STUDIO_CRASH_AT", None)
    if crash_at:
        env["STUDIO_CRASH_AT"] = crash_at
    p = subprocess.run([sys.executable, "-m", "tests.jobs.rag_crash_child", str(indexes),
                        str(folder), *extra], env=env, cwd=str(ROOT), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode in (0, -signal.SIGKILL), p.stderr[-2000:]
    return p.returncode


def hits(kb, query: str):
    return search(kb, query, RetrievalConfig(top_k=8, hybrid=True, candidates=30),
                  lambda q: encode([q])[0]).hits


def assert_consistent(kb) -> None:
    rep = kb.check(repair=False)
    assert rep.clean, rep.summary()
    assert kb.chunk_count() == sum(r.chunks for r in kb.sources() if r.status == "indexed")
    assert not (kb.dir / "writing.json").exists()


def assert_served_only_from_sources(kb, query: str) -> list:
    found = hits(kb, query)
    listed = {r.path: r for r in kb.sources() if r.status == "indexed"}
    for h in found:
        assert h.chunk.path in listed, f"{h.chunk.path} is served but not in the sources table"
        text = (kb.dir / "texts" / f"{listed[h.chunk.path].hash}.txt").read_text()
        assert h.chunk.text in text, "served text differs from the listed version"
    return found


def finish_and_check(kb, folder: Path) -> None:
    """After the restart: delete a source, re-ingest an edited file, only new text remains."""
    indexed = [r.path for r in kb.sources() if r.status == "indexed"]
    if indexed:
        gone = indexed[0]
        kb.delete_source(gone)
        assert all(h.chunk.path != gone for h in hits(kb, gone.split("/")[-1]))
        assert_consistent(kb)
    write_notes(folder, {1: "# Boat 1\n\nThe boat named vessel1 moved to the marina quay.\n"})
    res = ingest(kb, folder)
    assert "notes/f1.md" in [p for p, _ in res.indexed]
    assert_consistent(kb)
    assert len([r for r in kb.sources() if r.status == "indexed"]) == FILES
    f1 = [h for h in hits(kb, "vessel1 moored berth1 crane marina")
          if h.chunk.path.endswith("f1.md")]
    assert f1 and all("marina" in h.chunk.text and "berth1" not in h.chunk.text for h in f1)


STEPS = ["rag.after_upsert:1", "rag.after_manifest:1", "rag.after_batch:1",
         "rag.after_upsert:2", "rag.after_manifest:3", "rag.after_batch:3"]


@pytest.mark.parametrize("crash_at", STEPS)
def test_first_ingest_killed_at_each_step_restarts_consistent(tmp_path, crash_at):
    folder = tmp_path / "notes"
    write_notes(folder)
    assert child(tmp_path / "idx", folder, crash_at) == -signal.SIGKILL, "the crash point ran"
    kb = open_kb(tmp_path / "idx")  # the restart: an interrupted write is repaired at open
    assert_consistent(kb)
    batch = int(crash_at.rsplit(":", 1)[1])
    stored = (batch - 1) * 3 + (3 if "upsert" not in crash_at else 0)
    assert len(kb.sources()) == stored, "every batch whose manifest was saved is kept"
    found = assert_served_only_from_sources(kb, "boat vessel2 berth2 moored")
    assert bool(found) == bool(stored)
    finish_and_check(kb, folder)


@pytest.mark.parametrize("crash_at", ["rag.after_upsert:1", "rag.after_manifest:1"])
def test_reingest_of_edited_files_killed_mid_write_never_serves_stale_text(tmp_path, crash_at):
    folder = tmp_path / "notes"
    write_notes(folder)
    assert child(tmp_path / "idx", folder, None) == 0
    write_notes(folder, {1: "# Boat 1\n\nThe boat named vessel1 now sails from the pier.\n",
                         4: "# Boat 4\n\nThe boat named vessel4 was sold.\n"})
    assert child(tmp_path / "idx", folder, crash_at) == -signal.SIGKILL
    kb = open_kb(tmp_path / "idx")
    assert_consistent(kb)
    f1 = [h for h in assert_served_only_from_sources(kb, "vessel1 berth1 pier sails")
          if h.chunk.path.endswith("f1.md")]
    assert len({h.chunk.id for h in f1}) == 1, "one version of the file, not both"
    new = "upsert" not in crash_at
    assert ("pier" in f1[0].chunk.text) == new and ("berth1" in f1[0].chunk.text) != new
    res = ingest(kb, folder)
    assert ("notes/f1.md" in [p for p, _ in res.indexed]) != new
    assert_consistent(kb)
    f4 = [h for h in hits(kb, "vessel4 berth4 sold") if h.chunk.path.endswith("f4.md")]
    assert f4 and all("sold" in h.chunk.text for h in f4)


def test_delete_killed_after_the_manifest_save_leaves_no_orphan(tmp_path):
    folder = tmp_path / "notes"
    write_notes(folder)
    assert child(tmp_path / "idx", folder, None) == 0
    assert child(tmp_path / "idx", folder, "rag.after_manifest:1", "delete",
                 "notes/f2.md") == -signal.SIGKILL
    kb = open_kb(tmp_path / "idx")
    assert kb.last_repair is not None and kb.last_repair.orphans == 1
    assert_consistent(kb)
    assert all(h.chunk.path != "notes/f2.md" for h in hits(kb, "vessel2 berth2"))


def test_check_and_repair_finds_orphans_and_damaged_sources(tmp_path):
    """What an outside change (or a store from before these writes) looks like, and what the
    "Check and repair" action does about it."""
    folder = tmp_path / "notes"
    write_notes(folder)
    kb = open_kb(tmp_path / "idx")
    ingest(kb, folder)
    kb.collection.add(ids=["stray-1"], embeddings=encode(["stray text"]),
                      documents=["stray text"], metadatas=[{"path": "old.zip/x.md", "hash": "0",
                                                            "start_line": 1, "end_line": 1}])
    f3 = kb.source("notes/f3.md")
    kb.collection.delete(ids=[f"{i}" for i in kb.collection.get(where={"path": f3.path})["ids"]])
    rep = kb.check(repair=False)
    assert rep.orphans == 1 and rep.damaged == ["notes/f3.md"] and not rep.repaired
    assert "1 orphan chunk(s) found" in rep.summary()
    rep = kb.check(repair=True)
    assert rep.repaired and "removed" in rep.summary()
    assert_consistent(kb)
    assert kb.source("notes/f3.md").status == "skipped"
    assert "ingest it again" in kb.source("notes/f3.md").reason
    res = ingest(kb, folder)
    assert [p for p, _ in res.indexed] == ["notes/f3.md"]
    assert_consistent(kb)
