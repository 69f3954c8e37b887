"""A real Tiny GPT job through studio.jobs: it reports progress, stops on Cancel with a
checkpoint, resumes from that checkpoint and finishes with results the comparison table shows."""

from __future__ import annotations

import json
from pathlib import Path

from tabs.tinygpt.compare import compare_runs
from tabs.tinygpt.config import TinyGPTConfig
from tests.conftest import wait_for

MAX_STEPS = 400


def small_config() -> dict:
    return TinyGPTConfig(max_corpus_chars=100_000, n_layer=1, n_head=2, n_embd=32, block_size=32,
                         batch_size=8, max_steps=MAX_STEPS, warmup_steps=10, log_every=5,
                         eval_every=100, eval_batches=2, sample_every=200, sample_tokens=16,
                         checkpoint_every=20).to_dict()



def test_train_cancel_resume_finish(studio):
    run_id = studio.jobs.submit(kind="tinygpt", entry="tabs.tinygpt.train:run",
                                config=small_config(), title="tiny rope", seed=1)
    # progress arrives while it runs
    wait_for(lambda: studio.jobs.view(run_id).done >= 40, timeout=90)
    v = studio.jobs.view(run_id)
    assert v.status == "running" and v.total == MAX_STEPS
    assert any("train_loss" in m for m in v.metrics)

    studio.jobs.cancel(run_id)
    v = studio.jobs.wait(run_id, timeout=60)
    assert v.status == "cancelled"
    run_dir = Path(v.run_dir)
    stopped_at = torch_step(run_dir / "ckpt.pt")
    assert 40 <= stopped_at < MAX_STEPS
    assert not (run_dir / "results.json").exists()

    studio.jobs.resume(run_id)
    v = studio.jobs.wait(run_id, timeout=120)
    assert v.status == "succeeded", v.error + v.log_tail
    assert f"resumed from step {stopped_at}" in (run_dir / "log.txt").read_text()
    steps = [m["step"] for m in v.metrics if "train_loss" in m]
    assert steps == sorted(steps) and steps[-1] == MAX_STEPS  # continued, did not restart
    results = json.loads((run_dir / "results.json").read_text())
    assert results["step"] == MAX_STEPS and results["val_ppl_2x"] is not None
    assert {a["label"] for a in v.artifacts} >= {"checkpoint (model + optimizer)", "results",
                                                 "tokenizer", "samples"}
    assert len(v.artifacts) == len({a["path"] for a in v.artifacts})  # none twice after resume

    table = compare_runs(studio.jobs.list_runs("tinygpt"))
    row = table.set_index("id").loc[run_id]
    assert row["steps"] == MAX_STEPS and row["pos"] == "rope" and row["val_ppl"] > 1


def torch_step(path: Path) -> int:
    import torch

    return int(torch.load(path, weights_only=True)["step"])
