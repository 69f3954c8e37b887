"""A real QLoRA job through studio.jobs (child process): live metrics, Cancel saves the adapter
so far and a checkpoint, Resume continues from that checkpoint to the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tabs.qlora import service
from tabs.qlora.config import QLoRAConfig
from tabs.qlora.tiny import fact_records, make_tiny_base, write_jsonl
from tests.conftest import wait_for

MAX_STEPS = 120



@pytest.mark.slow  # ~1 minute on 2 cores; CI runs it
def test_cancel_then_resume_continues_from_the_checkpoint(studio, tmp_path):
    base = make_tiny_base(tmp_path / "base")
    data = write_jsonl(fact_records("alpaca"), tmp_path / "facts.jsonl")
    cfg = QLoRAConfig(base_model=str(base), train_file=str(data), eval_fraction=0.25,
                      max_seq_length=128, lora_r=8, lora_alpha=16, micro_batch_size=2,
                      grad_accumulation=1, learning_rate=3e-3, max_steps=MAX_STEPS,
                      warmup_steps=0, eval_steps=0, save_steps=10, sample_prompts=1,
                      sample_tokens=8)
    run_id = service.submit(studio, cfg)
    wait_for(lambda: studio.jobs.view(run_id).done >= 12, timeout=120)
    studio.jobs.cancel(run_id)
    v = studio.jobs.wait(run_id, timeout=60)
    assert v.status == "cancelled", v.error + v.log_tail
    run_dir = Path(v.run_dir)
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()  # adapter so far
    ckpts = [e for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
             if e["type"] == "checkpoint"]
    stopped = ckpts[-1]["step"]
    assert 12 <= stopped < MAX_STEPS and not (run_dir / "results.json").exists()

    studio.jobs.resume(run_id)
    v = studio.jobs.wait(run_id, timeout=120)
    assert v.status == "succeeded", v.error + v.log_tail
    log = (run_dir / "log.txt").read_text()
    assert f"resumed from step {stopped}" in log
    steps = [m["step"] for m in v.metrics if "train_loss" in m]
    assert steps == sorted(steps) and steps[-1] == MAX_STEPS  # continued, did not restart
    assert any(s > stopped for s in steps)
    losses = [m["train_loss"] for m in v.metrics if "train_loss" in m]
    assert losses[-1] < losses[0] / 2
    assert json.loads((run_dir / "results.json").read_text())["step"] == MAX_STEPS
    assert run_id in service.finished_runs(studio)
