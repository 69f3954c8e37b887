"""studio.hooks' Trainer callback, the one every transformers job (QLoRA, VLM adapt, Whisper
fine-tune) reports through: speed in seconds per step or tokens per second, eval loss with its
perplexity, Cancel as a checkpointed stop, and Resume from the newest checkpoint."""

from __future__ import annotations

import math
from types import SimpleNamespace

from studio.hooks import resume_from, trainer_callback
from studio.reporting import Reporter, read_events


def _state(step: int, tokens: int = 0) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, max_steps=10, num_input_tokens_seen=tokens)


def _metrics(run_dir) -> list[dict]:
    return [e for e in read_events(run_dir) if e["type"] == "metrics"]


def test_tokens_per_second_eval_perplexity_and_the_log(tmp_path):
    from transformers import TrainerControl

    report = Reporter(tmp_path)
    cb = trainer_callback(report, tokens_per_s=True)
    args, control = SimpleNamespace(output_dir=str(tmp_path)), TrainerControl()
    cb.on_train_begin(args, _state(0, tokens=100), control)
    cb.on_log(args, _state(2, tokens=600), control,
              logs={"loss": 1.5, "learning_rate": 1e-3, "eval_loss": 2.0})
    report.close()
    train, ev = _metrics(tmp_path)
    assert train["step"] == 2 and train["train_loss"] == 1.5 and train["lr"] == 1e-3
    assert train["tokens_per_s"] > 0 and "s_per_step" not in train  # 500 tokens since begin
    assert ev["eval_loss"] == 2.0 and math.isclose(ev["eval_ppl"], math.exp(2.0))
    log = (tmp_path / "log.txt").read_text()
    assert "step 2: loss 1.5000, " in log and " tokens/s" in log
    assert "step 2: eval loss 2.0000 (perplexity 7.39)" in log


def test_seconds_per_step_by_default_and_cancel_saves_a_checkpoint(tmp_path):
    from transformers import TrainerControl

    report = Reporter(tmp_path)
    cb = trainer_callback(report)
    args, control = SimpleNamespace(output_dir=str(tmp_path)), TrainerControl()
    cb.on_train_begin(args, _state(0), control)
    cb.on_log(args, _state(4), control, logs={"loss": 0.5})
    report.request_stop()
    cb.on_step_end(args, _state(5), control)
    (tmp_path / "checkpoint-5").mkdir()
    cb.on_save(args, _state(5), control)
    (m,) = _metrics(tmp_path)
    assert m["s_per_step"] >= 0 and "tokens_per_s" not in m and "eval_ppl" not in m
    assert control.should_training_stop and control.should_save
    assert report.last_checkpoint() == (tmp_path / "checkpoint-5", 5)
    assert resume_from(report) == str(tmp_path / "checkpoint-5")
    report.close()
    log = (tmp_path / "log.txt").read_text()
    assert "s/step" in log and "cancel requested: saving a checkpoint at step 5" in log
    assert "resumed from step 5 (checkpoint-5)" in log


def test_a_fresh_run_has_nothing_to_resume_from(tmp_path):
    report = Reporter(tmp_path)
    assert resume_from(report) is None
    report.close()
    assert "resumed" not in (tmp_path / "log.txt").read_text()
