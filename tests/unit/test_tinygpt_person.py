"""Tiny GPT as a person meets it (#19): the loss curves of several runs on one plot, a sample
of how the tokenizer cuts the corpus in the preview, and deleting runs."""

from __future__ import annotations

import json
import time

import pytest

from tabs.tinygpt import compare, service
from tabs.tinygpt.config import TinyGPTConfig


def _fake_run(studio, rid, status, losses, owner=None):
    d = studio.jobs.runs_dir / rid
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"id": rid, "kind": "tinygpt", "status": status,
                                            "created": time.time(), "title": f"GPT {rid}",
                                            "owner": owner}))
    with open(d / "events.jsonl", "w") as f:
        for step, loss in enumerate(losses, 1):
            f.write(json.dumps({"t": time.time(), "type": "metrics", "step": step * 10,
                                "train_loss": loss + 0.1, "val_loss": loss}) + "\n")
    return d


def test_loss_curves_of_several_runs_share_one_plot(studio):
    _fake_run(studio, "run-aaaaaa", "succeeded", [3.0, 2.5, 2.0])
    _fake_run(studio, "run-bbbbbb", "cancelled", [3.2, 2.9])
    df = compare.loss_curves(studio.jobs.list_runs("tinygpt"), "val_loss")
    assert set(df["run"]) == {"GPT run-aaaaaa (aaaaaa)", "GPT run-bbbbbb (bbbbbb)"}
    assert len(df) == 5 and list(df.columns) == ["step", "value", "run"]
    train = compare.loss_curves(studio.jobs.list_runs("tinygpt"), "train_loss")
    assert train["value"].max() == pytest.approx(3.3)


def test_preview_shows_how_the_tokenizer_cuts_a_sample(studio):
    for kind in ("char", "bpe"):
        cfg = TinyGPTConfig(corpus="stdlib", max_corpus_chars=20_000, tokenizer=kind,
                            vocab_size=300)
        p = service.preview(cfg, studio.settings.home)
        md = p.markdown()
        assert "How the tokenizer cuts" in md and len(p.sample) == service.SAMPLE_TOKENS
        if kind == "char":
            assert all(len(t) == 1 for t in p.sample)
        else:
            assert any(len(t) > 1 for t in p.sample)  # BPE merges characters


def test_delete_runs_through_the_app(tmp_path):
    from gradio_client import Client

    from tests.app.owners import client_owner
    from tests.conftest import launch_studio, stop_studio

    s, app, url = launch_studio(tmp_path / "home", tab_modules=["tabs.tinygpt"])
    try:
        client = Client(url, verbose=False)
        me = client_owner(client)  # a script's runs are its session's
        done = _fake_run(s, "run-cccccc", "succeeded", [3.0, 2.0], owner=me)
        shared = _fake_run(s, "run-dddddd", "succeeded", [3.0, 2.0])  # made outside the pages
        running = s.jobs.submit("tinygpt", "tests.jobs.toy:count", {"steps": 600,
                                                                   "sleep": 0.05}, owner=me)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and s.jobs.view(running).status != "running":
            time.sleep(0.1)
        out = client.predict("run-cccccc", "val_loss", api_name="/tinygpt_delete")
        assert "Deleted run" in out[0] and not done.exists()
        curves = client.predict("val_loss", api_name="/tinygpt_curves")
        assert "run-cccccc" not in json.dumps(curves)
        with pytest.raises(Exception, match="cancel it before deleting"):
            client.predict(running, "val_loss", api_name="/tinygpt_delete")
        assert s.jobs.run_dir(running).exists()
        with pytest.raises(Exception, match="read-only"):
            client.predict("run-dddddd", "val_loss", api_name="/tinygpt_delete")
        assert shared.exists(), "a shared run is deleted by no page"
        s.jobs.cancel(running)
        s.jobs.wait(running, timeout=60)
    finally:
        stop_studio(s, app)
