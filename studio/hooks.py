"""Adapters from training frameworks to the studio's `Reporter`.

`trainer_callback(report)`: a transformers `TrainerCallback` that reports progress and the
training loss, turns Cancel (``report.should_stop()``) into ``control.should_training_stop``
with a checkpoint, and marks every checkpoint so Resume finds it through
``report.last_checkpoint()``. `every_steps` calls a job's own function every N optimizer steps
(an evaluation that needs generation, say), in the training process, between steps.
"""

from __future__ import annotations

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


def trainer_callback(report: Any, every_steps: int = 0,
                     on_every: Callable[[int], None] | None = None) -> Any:
    """A TrainerCallback speaking to `report` (see the module docstring)."""
    from transformers import TrainerCallback

    class ReportCallback(TrainerCallback):
        def __init__(self) -> None:
            self.t_last = time.monotonic()
            self.step_last = 0

        def on_train_begin(self, args, state, control, **kw):
            self.t_last, self.step_last = time.monotonic(), state.global_step
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
            if "loss" not in logs:
                return
            step = state.global_step
            now = time.monotonic()
            s_per_step = (now - self.t_last) / max(1, step - self.step_last)
            self.t_last, self.step_last = now, step
            vram = vram_peak_gib()
            report.metrics(step, train_loss=logs["loss"], lr=logs.get("learning_rate"),
                           s_per_step=s_per_step, vram_peak_gib=vram)
            report.log(f"step {step}: loss {logs['loss']:.4f}, {s_per_step:.2f} s/step"
                       + (f", VRAM peak {vram:.2f} GiB" if vram is not None else ""))

        def on_save(self, args, state, control, **kw):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if path.exists():
                report.checkpoint(path, state.global_step)
                report.log(f"checkpoint saved at step {state.global_step}")

    return ReportCallback()
