"""The job panel's timer sends nothing while a run is unchanged."""

from __future__ import annotations

import gradio as gr

from studio.ui.widgets import job_panel


def _skipped(x) -> bool:
    return isinstance(x, dict) and x == gr.skip()


def test_panel_refresh_sends_nothing_when_nothing_changed(studio):
    with gr.Blocks():
        panel = job_panel(studio, kind="toy")
    rid = studio.jobs.submit("toy", "tests.jobs.toy:count", {"steps": 3, "sleep": 0.01})
    studio.jobs.wait(rid, timeout=60)
    *first, key = panel.refresh(rid, None)
    assert "succeeded" in first[0] and not any(_skipped(x) for x in first)
    *again, key2 = panel.refresh(rid, key)
    assert all(_skipped(x) for x in again) and key2 == key
    with open(studio.jobs.run_dir(rid) / "log.txt", "a") as f:
        f.write("12:00:00 one more line\n")
    *changed, key3 = panel.refresh(rid, key)
    assert key3 != key and "one more line" in changed[3]
