"""Whisper fine-tuning benchmark: seconds per step and peak VRAM of the studio's trainer against
the plain ``Seq2SeqTrainer`` recipe of the Hugging Face fine-tuning guide, in one run, on random
weights of the real architectures (Whisper small and medium), batch 8, 30 s inputs.

Plain recipe (the guide, "Fine-Tune Whisper For Multilingual ASR with Transformers"): the model
in fp32, ``Seq2SeqTrainingArguments(fp16=True, gradient_checkpointing=True, learning_rate=1e-5)``
with the default AdamW, a full fine-tune of either size.
Studio: `tabs.whisper_ft.train` as the job runs it: ``prepare_for_training`` (SpecAugment on,
gradient checkpointing only when the memory estimate needs it) and ``training_args`` (bf16,
8-bit AdamW from bitsandbytes); small = full fine-tune, medium = LoRA r32 on every attention and
MLP projection over the bf16 base (the method "auto" picks for medium).

Every path runs under a 12 GiB cap (``emulate_card``, as on the reference card); a path that runs
out of memory there is recorded as such and then measured uncapped, so its peak is still known.

    python bench/whisper_ft.py            # GPU machine: writes bench/results/whisper_ft.json
    python bench/whisper_ft.py --tiny     # CPU plumbing check with a tiny architecture
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: nothing to download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GiB = 1024**3
CAP = 12 * GiB
ARCHS = {
    "small": {"d_model": 768, "encoder_layers": 12, "decoder_layers": 12,
              "encoder_attention_heads": 12, "decoder_attention_heads": 12,
              "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072},
    "medium": {"d_model": 1024, "encoder_layers": 24, "decoder_layers": 24,
               "encoder_attention_heads": 16, "decoder_attention_heads": 16,
               "encoder_ffn_dim": 4096, "decoder_ffn_dim": 4096},
    "tiny": {"d_model": 64, "encoder_layers": 1, "decoder_layers": 1,
             "encoder_attention_heads": 2, "decoder_attention_heads": 2,
             "encoder_ffn_dim": 128, "decoder_ffn_dim": 128},
}


def random_whisper(arch: str, device: str):
    """Random weights of the real architecture (multilingual vocabulary, 80 mel bins)."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(**ARCHS[arch], num_mel_bins=80, vocab_size=51865,
                        max_source_positions=1500, max_target_positions=448,
                        decoder_start_token_id=50258, eos_token_id=50257, pad_token_id=50257,
                        bos_token_id=50257, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = WhisperForConditionalGeneration(cfg)
    model.generation_config.forced_decoder_ids = None
    return model


class SyntheticPieces:
    """Batches like the job's: 30 s log-mel windows and ~60-token transcripts."""

    def __init__(self, n: int, label_tokens: int = 64):
        import numpy as np

        rng = np.random.default_rng(0)
        self.items = [{"input_features": rng.standard_normal((80, 3000)).astype("float32"),
                       "labels": [50259, 50360, 50364]
                       + rng.integers(0, 50257, label_tokens - 4).tolist() + [50257]}
                      for _ in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def step_timer():
    import torch
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.losses, self.t0 = [], [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(round(float(logs["loss"]), 4))

    return Timer()


def plain_trainer(arch: str, device: str, data, steps: int, out: str):
    """The guide's recipe, as written there (eval left out: only training steps are timed)."""
    from transformers import Seq2SeqTrainingArguments

    from tabs.whisper_ft.train import collate

    model = random_whisper(arch, device)
    cuda = device == "cuda"
    args = Seq2SeqTrainingArguments(
        output_dir=out, per_device_train_batch_size=8, gradient_accumulation_steps=1,
        learning_rate=1e-5, warmup_steps=0, max_steps=steps, gradient_checkpointing=True,
        fp16=cuda, use_cpu=not cuda, save_strategy="no", logging_steps=1, report_to="none",
        remove_unused_columns=False, disable_tqdm=True, label_names=["labels"])
    return model, args, collate, ["fp32 weights, fp16 autocast, gradient checkpointing, "
                                  f"optimizer {getattr(args.optim, 'value', args.optim)}"]


def studio_trainer(arch: str, device: str, data, steps: int, out: str):
    from tabs.whisper_ft.config import WhisperFTConfig
    from tabs.whisper_ft.train import (
        collate,
        compute_dtype,
        prepare_for_training,
        training_args,
        want_checkpointing,
    )

    cfg = WhisperFTConfig(base_model=f"openai/whisper-{arch}", dataset="bench", batch_size=8,
                          grad_accumulation=1, warmup_steps=0, max_steps=steps, save_steps=0)
    method = cfg.resolved_method()
    dtype = compute_dtype(cfg, device)
    checkpointing = want_checkpointing(cfg, device, CAP)
    model = random_whisper(arch, device)
    if method == "lora":
        model = model.to(dtype)
    model, notes = prepare_for_training(model, cfg, checkpointing)
    args = training_args(cfg, Path(out), device, dtype)
    args.save_strategy = "no"
    args.logging_steps = 1
    return model, args, collate, [f"{method}, {str(dtype).split('.')[-1]}, optimizer "
                                  f"{getattr(args.optim, 'value', args.optim)}", *notes]


def measure(build, arch: str, device: str, warmup: int, steps: int, cap: int | None) -> dict:
    import torch
    from transformers import Seq2SeqTrainer, Trainer

    from studio.devices import emulate_card

    if device == "cuda":
        if cap:
            emulate_card(cap)
        else:
            torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    data = SyntheticPieces(8 * (warmup + steps))
    out: dict = {"cap_gib": cap / GiB if cap else None}
    timer = step_timer()
    model = trainer = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model, args, collate, notes = build(arch, device, data, warmup + steps, tmp)
            cls = Seq2SeqTrainer if build is plain_trainer else Trainer
            trainer = cls(model=model, args=args, train_dataset=data, data_collator=collate,
                          callbacks=[timer])
            t0 = time.perf_counter()
            trainer.train()
            out["wall_s"] = round(time.perf_counter() - t0, 2)
        timed = timer.times[warmup:]
        out.update(notes=notes, s_per_step=round(statistics.median(timed), 4),
                   s_per_step_mean=round(statistics.fmean(timed), 4), steps_timed=len(timed),
                   loss_first=timer.losses[0] if timer.losses else None,
                   loss_last=timer.losses[-1] if timer.losses else None,
                   trainable_params=sum(p.numel() for p in model.parameters()
                                        if p.requires_grad))
        if device == "cuda":
            out["peak_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
            out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GiB, 3)
        out["oom"] = False
    except torch.OutOfMemoryError as e:
        out.update(oom=True, error=str(e).splitlines()[0][:300])
    finally:
        del trainer, model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    print(arch, build.__name__, json.dumps(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    import torch
    import transformers

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU plumbing check, tiny architecture")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--archs", default="small,medium")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    archs = ["tiny"] if args.tiny else args.archs.split(",")
    steps, warmup = (2, 1) if args.tiny else (args.steps, args.warmup)
    out_path = Path(args.out) if args.out else (
        Path(tempfile.gettempdir()) / "whisper_ft_tiny.json" if args.tiny
        else ROOT / "bench" / "results" / "whisper_ft.json")
    try:
        import bitsandbytes
        bnb = bitsandbytes.__version__
    except ImportError:
        bnb = None
    result: dict = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else
        f"CPU ({platform.machine()})", "cap_gib": CAP / GiB, "batch": 8,
        "input": "30 s log-mel windows (80 x 3000), 64-token transcripts, random weights",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "bitsandbytes": bnb}, "steps_timed": steps, "warmup_steps": warmup,
        "results": {}}
    for arch in archs:
        r: dict = {}
        r["plain"] = measure(plain_trainer, arch, device, warmup, steps, CAP)
        if r["plain"].get("oom"):
            r["plain_uncapped"] = measure(plain_trainer, arch, device, warmup, steps, None)
        r["studio"] = measure(studio_trainer, arch, device, warmup, steps, CAP)
        base = r["plain"] if not r["plain"].get("oom") else r.get("plain_uncapped", {})
        if base.get("s_per_step") and r["studio"].get("s_per_step"):
            r["speedup"] = round(base["s_per_step"] / r["studio"]["s_per_step"], 3)
        r["studio_fits_12gib"] = not r["studio"].get("oom") and (
            r["studio"].get("peak_gib") is None or r["studio"]["peak_gib"] <= CAP / GiB)
        result["results"][arch] = r
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1))  # partial, in case of a time limit
    out_path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
