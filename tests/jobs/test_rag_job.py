"""A big RAG ingest runs as a background job in its own process; the app stores its result."""

from __future__ import annotations

from pathlib import Path

from tabs.rag.config import KIND, IngestLimits
from tabs.rag.service import get_service
from tests.conftest import wait_for


def test_folder_ingest_as_a_job_reports_progress_and_lands_in_the_index(studio):
    svc = get_service(studio)
    svc.limits = IngestLimits(background_files=5)  # more files than this: a job
    folder = studio.settings.home / "journal"
    folder.mkdir()
    plants = ["sunflowers", "garlic", "leeks", "beans", "chard", "radishes", "kale", "onions"]
    for day, plant in enumerate(plants, 1):
        (folder / f"day{day}.md").write_text(
            f"# Day {day}\n\nToday I planted {plant} in bed {day}.\n")
    (folder / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    res = svc.ingest("journal", folder="journal")  # auto: 9 files > 5 -> background job
    assert res.run_id and not res.indexed, "big ingests leave the request"
    view = studio.jobs.wait(res.run_id, timeout=240)
    assert view.status == "succeeded", view.log_tail
    assert view.kind == KIND and view.total == 8 and view.done == 8, "progress in chunks"
    assert view.metrics and view.metrics[-1]["chunks_per_s"] > 0
    assert "skipped journal/scan.png: binary" in view.log_tail
    # stored by the service's own thread when the job ends, without any request asking
    wait_for(lambda: (Path(view.run_dir) / "ingest" / "applied.json").exists(), timeout=60)
    assert svc.sync_jobs() == [] and svc.pending_jobs() == [], "a job's result is stored once"
    rows = {r[0]: r for r in svc.source_rows("journal")}
    assert sum(1 for r in rows.values() if r[2] == "indexed") == 8
    assert rows["journal/scan.png"][2] == "skipped"
    hit = svc.search("journal", "Where did I plant the radishes?").hits[0]
    assert hit.chunk.path == "journal/day6.md"
