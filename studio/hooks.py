"""Adapters from training frameworks to the studio's `Reporter`.

`trainer_callback(report)`: a transformers `TrainerCallback` that reports progress, the
training loss with its speed (seconds per step, or tokens per second) and VRAM peak, and the
eval loss with its perplexity; turns Cancel (``report.should_stop()``) into
``control.should_training_stop`` with a checkpoint, and marks every checkpoint so Resume finds it
through ``report.last_checkpoint()`` (`resume_from`). `every_steps` calls a job's own function
every N optimizer steps (an evaluation that needs generation, say), in the training process,
between steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def vram_peak_gib() -> float | None:
    """Peak CUDA memory allocated by this process so far, or None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 1024**3


def resume_from(report: Any) -> str | None:
    """The checkpoint a cancelled or crashed run continues from (said in the log), or None."""
    last = report.last_checkpoint()
    if last:
        report.log(f"resumed from step {last[1]} ({last[0].name})")
    return str(last[0]) if last else None


def trainer_callback(report: Any, every_steps: int = 0,
                     on_every: Callable[[int], None] | None = None,
                     tokens_per_s: bool = False) -> Any:
    """A TrainerCallback speaking to `report` (see the module docstring); `tokens_per_s` measures
    speed in input tokens (the Trainer must count them) instead of seconds per step."""
    from transformers import TrainerCallback

    class ReportCallback(TrainerCallback):
        def __init__(self) -> None:
            self.t_last = time.monotonic()
            self.step_last = 0
            self.tokens_last = 0

        def on_train_begin(self, args, state, control, **kw):
            self.t_last, self.step_last = time.monotonic(), state.global_step
            self.tokens_last = state.num_input_tokens_seen
            report.progress(state.global_step, state.max_steps, "training")

        def on_step_end(self, args, state, control, **kw):
            step = state.global_step
            report.progress(step, state.max_steps, f"step {step}/{state.max_steps}")
            if report.should_stop():
                report.log(f"cancel requested: saving a checkpoint at step {step}")
                control.should_training_stop = True
                control.should_save = True
            elif on_every and every_steps and step % every_steps == 0 and step < state.max_steps:
                on_every(step)
            return control

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            step = state.global_step
            if "loss" in logs:
                now = time.monotonic()
                if tokens_per_s:
                    tokens = state.num_input_tokens_seen - self.tokens_last
                    speed = {"tokens_per_s": tokens / max(1e-9, now - self.t_last)}
                    said = f"{speed['tokens_per_s']:,.0f} tokens/s"
                else:
                    speed = {"s_per_step": (now - self.t_last) / max(1, step - self.step_last)}
                    said = f"{speed['s_per_step']:.2f} s/step"
                self.t_last, self.step_last = now, step
                self.tokens_last = state.num_input_tokens_seen
                vram = vram_peak_gib()
                report.metrics(step, train_loss=logs["loss"], lr=logs.get("learning_rate"),
                               **speed, vram_peak_gib=vram)
                report.log(f"step {step}: loss {logs['loss']:.4f}, {said}"
                           + (f", VRAM peak {vram:.2f} GiB" if vram is not None else ""))
            if "eval_loss" in logs:
                ppl = math.exp(min(50.0, logs["eval_loss"]))
                report.metrics(step, eval_loss=logs["eval_loss"], eval_ppl=ppl)
                report.log(f"step {step}: eval loss {logs['eval_loss']:.4f} (perplexity "
                           f"{ppl:.2f})")

        def on_save(self, args, state, control, **kw):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if path.exists():
                report.checkpoint(path, state.global_step)
                report.log(f"checkpoint saved at step {state.global_step}")

    return ReportCallback()
