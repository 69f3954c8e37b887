"""Storing a finished ingest's result is the service's background work: a request never does
it, and it holds only its own knowledge base's lock."""

from __future__ import annotations

import json
import time

from tabs.rag import ingest as ingest_mod
from tabs.rag.config import KIND
from tabs.rag.ingest import Prepared, save_prepared
from tabs.rag.service import get_service
from tests.conftest import wait_for


def test_a_slow_result_to_store_never_holds_up_a_request(studio, monkeypatch):
    svc = get_service(studio)
    for name in ("a", "b"):
        svc.create_kb(name).bm25()  # first use imports bm25s: not what is measured
    run = studio.settings.runs_dir / f"20260101-000000-{KIND}-abcdef"
    save_prepared(run / "ingest", Prepared(), [])
    (run / "config.json").write_text(json.dumps({"kb": "a"}))
    (run / "run.json").write_text(json.dumps({"id": run.name, "kind": KIND, "title": "t",
                                              "status": "succeeded", "created": 0}))
    real = ingest_mod.apply

    def slow_apply(kb, prep, vectors):  # a 20k-file result
        time.sleep(4)
        return real(kb, prep, vectors)

    monkeypatch.setattr(ingest_mod, "apply", slow_apply)
    svc._wake.set()  # what the job manager does when a run ends
    time.sleep(0.5)  # the service's thread is now storing it, holding a's lock
    for name in ("b", "a"):
        t0 = time.perf_counter()
        svc.source_rows(name)
        svc.kb(name).bm25()
        took = time.perf_counter() - t0
        assert took < 1.5, f"a request on {name!r} waited {took:.1f} s for the store"
    wait_for(lambda: (run / "ingest" / "applied.json").exists(), timeout=30)
    assert svc.pending_jobs() == []
