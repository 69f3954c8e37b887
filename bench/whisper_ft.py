"""Whisper fine-tuning benchmark: seconds per step and peak VRAM of the studio's trainer against
the plain recipes a user would otherwise run, in one run, on random weights of the real
architectures (Whisper small and medium), batch 8, 30 s inputs, 64-token transcripts.

Plain recipes, as their guides write them:
- ``plain`` (both sizes): the Hugging Face guide "Fine-Tune Whisper For Multilingual ASR with
  Transformers": the model in fp32, ``Seq2SeqTrainingArguments(fp16=True,
  gradient_checkpointing=True, learning_rate=1e-5)``, default AdamW, a full fine-tune.
- ``plain_peft_lora`` (medium): PEFT's Whisper LoRA recipe (peft's int8 Whisper training
  notebook): the base loaded in 8-bit, ``prepare_model_for_kbit_training`` (gradient
  checkpointing), the conv1 hook so the encoder's adapters get gradients, ``LoraConfig(r=32,
  lora_alpha=64, target_modules=["q_proj", "v_proj"], lora_dropout=0.05)``,
  ``Seq2SeqTrainingArguments(fp16=True, learning_rate=1e-3, warmup_steps=50)``. This is the
  recipe a user with a 12 GB card runs for medium; it is the baseline for medium.
Studio: `tabs.whisper_ft.train` as the job runs it: ``plan_memory`` (optimizer and how many
layers to checkpoint, from the memory estimate for the 12 GiB card), ``prepare_for_training``
and ``training_args``; small = full fine-tune, medium = LoRA r32 on q/k/v/out/fc1/fc2 of every
layer over the bf16 base (what "auto" picks for medium). ``ablations`` (medium) change one
setting each, to show what costs what.

Every path runs under a 12 GiB cap (``emulate_card``); one that runs out of memory there is
recorded as such and then measured uncapped, so its speed and peak are still known.
Timing: 3 warm-up steps, then the wall time of the timed steps between two synchronisations
(no sync inside the window, as in a real run), over their number.

    python bench/whisper_ft.py            # GPU machine: writes bench/results/whisper_ft.json
    python bench/whisper_ft.py --tiny     # CPU plumbing check with a tiny architecture
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
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


def step_timer(warmup: int):
    """Wall time of the steps after `warmup`, synchronised only at the window's two ends."""
    import torch
    from transformers import TrainerCallback

    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    class Timer(TrainerCallback):
        def __init__(self):
            self.t0 = self.t1 = None
            self.steps, self.losses = 0, []

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup:
                sync()
                self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step > warmup:
                self.steps += 1
            if state.global_step == state.max_steps:
                sync()
                self.t1 = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(round(float(logs["loss"]), 4))

    return Timer()


LOG_EVERY = 5  # the same for every path: each log reads the loss on the host (a sync)


def plain_trainer(arch: str, device: str, steps: int, out: str):
    """The guide's recipe, as written there (eval left out: only training steps are timed)."""
    from transformers import Seq2SeqTrainingArguments

    from tabs.whisper_ft.train import collate

    model = random_whisper(arch, device)
    cuda = device == "cuda"
    args = Seq2SeqTrainingArguments(
        output_dir=out, per_device_train_batch_size=8, gradient_accumulation_steps=1,
        learning_rate=1e-5, warmup_steps=0, max_steps=steps, gradient_checkpointing=True,
        fp16=cuda, use_cpu=not cuda, save_strategy="no", logging_steps=LOG_EVERY,
        logging_first_step=True, report_to="none", remove_unused_columns=False,
        disable_tqdm=True, label_names=["labels"])
    return model, args, collate, ["full fine-tune, fp32 weights, fp16 autocast, gradient "
                                  "checkpointing on every layer, optimizer "
                                  f"{getattr(args.optim, 'value', args.optim)}"], {}


def plain_peft_lora(arch: str, device: str, steps: int, out: str):
    """PEFT's Whisper LoRA recipe, as written there: 8-bit base, kbit preparation (gradient
    checkpointing), conv1 hook, LoRA r32 on q_proj/v_proj, Seq2SeqTrainer in fp16."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        BitsAndBytesConfig,
        Seq2SeqTrainingArguments,
        WhisperForConditionalGeneration,
    )

    from tabs.whisper_ft.train import collate

    folder = Path(out) / "base"
    base = random_whisper(arch, device)
    base.save_pretrained(folder)  # what from_pretrained would read
    del base
    model = WhisperForConditionalGeneration.from_pretrained(
        folder, quantization_config=BitsAndBytesConfig(load_in_8bit=True),
        device_map={"": 0})
    model = prepare_model_for_kbit_training(model)

    def make_inputs_require_grad(module, input, output):
        output.requires_grad_(True)

    model.model.encoder.conv1.register_forward_hook(make_inputs_require_grad)
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05,
                                             target_modules=["q_proj", "v_proj"], bias="none"))
    args = Seq2SeqTrainingArguments(
        output_dir=out, per_device_train_batch_size=8, gradient_accumulation_steps=1,
        learning_rate=1e-3, warmup_steps=50, max_steps=steps, fp16=True, save_strategy="no",
        logging_steps=LOG_EVERY, logging_first_step=True, report_to="none",
        remove_unused_columns=False, disable_tqdm=True, label_names=["labels"])
    trainable, total = model.get_nb_trainable_parameters()
    return model, args, collate, [
        "LoRA r32 on q_proj,v_proj (dropout 0.05) over an 8-bit base, fp16 autocast, "
        f"gradient checkpointing on every layer (kbit preparation), optimizer "
        f"{getattr(args.optim, 'value', args.optim)}: {trainable / 1e6:.2f}M trainable of "
        f"{total / 1e6:.1f}M"], {}


def studio_trainer(arch: str, device: str, steps: int, out: str, **changes):
    """The job's code path; `changes` are WhisperFTConfig fields (ablations), plus
    ``lora_input_cast=True`` for PEFT's own cast of every adapter input (the old path)."""
    from tabs.whisper_ft.config import WhisperFTConfig
    from tabs.whisper_ft.train import (
        GiB,
        collate,
        compute_dtype,
        plan_memory,
        prepare_for_training,
        set_lora_input_cast,
        training_args,
    )

    cast = changes.pop("lora_input_cast", False)
    cfg = WhisperFTConfig(base_model=f"openai/whisper-{arch}", dataset="bench", batch_size=8,
                          grad_accumulation=1, warmup_steps=0, max_steps=steps, save_steps=0,
                          **changes)
    method = cfg.resolved_method()
    dtype = compute_dtype(cfg, device)
    plan = plan_memory(cfg, device, CAP, label_tokens=64)  # the job counts its data's
    model = random_whisper(arch, device)
    if method == "lora":
        model = model.to(dtype)
    model, notes = prepare_for_training(model, cfg, plan)
    if cast:
        set_lora_input_cast(model, True)
        notes.append("PEFT's input cast to fp32 on every adapter (as before)")
    args = training_args(cfg, Path(out), device, dtype, plan)
    args.save_strategy = "no"
    args.logging_steps = LOG_EVERY
    plan_info = {"optimizer": plan.optimizer, "checkpointed_encoder_layers": plan.ckpt_encoder,
                 "checkpointed_decoder_layers": plan.ckpt_decoder,
                 "estimate_gib": round(plan.estimate / GiB, 2)} if device == "cuda" else {}
    return model, args, collate, [f"{method}, {str(dtype).split('.')[-1]}, optimizer "
                                  f"{getattr(args.optim, 'value', args.optim)}",
                                  *plan.notes, *notes], plan_info


def measure(build, arch: str, device: str, warmup: int, steps: int, cap: int | None,
            **changes) -> dict:
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
    timer = step_timer(warmup)
    model = trainer = None
    t_start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if build is studio_trainer:
                model, args, collate, notes, plan = build(arch, device, warmup + steps, tmp,
                                                          **changes)
            else:
                model, args, collate, notes, plan = build(arch, device, warmup + steps, tmp)
            cls = Seq2SeqTrainer if build is not studio_trainer else Trainer
            trainer = cls(model=model, args=args, train_dataset=data, data_collator=collate,
                          callbacks=[timer])
            t0 = time.perf_counter()
            trainer.train()
            out["wall_s"] = round(time.perf_counter() - t0, 2)
        out.update(notes=notes, plan=plan or None,
                   s_per_step=round((timer.t1 - timer.t0) / timer.steps, 4),
                   steps_timed=timer.steps,
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
    except Exception as e:  # a recipe that cannot run here is recorded, the bench goes on
        out.update(oom=False, error=f"{type(e).__name__}: {str(e)[:400]}")
    finally:
        out["total_s"] = round(time.perf_counter() - t_start, 1)
        del trainer, model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    print(arch, build.__name__, changes or "", json.dumps(out), flush=True)
    return out


def ratio(base: dict, ours: dict) -> float | None:
    """Speed-up of ours over base (base s/step over ours), when both ran."""
    if base.get("s_per_step") and ours.get("s_per_step"):
        return round(base["s_per_step"] / ours["s_per_step"], 3)
    return None


ABLATIONS = {  # medium, one change each against the studio's own choice
    "as_before": {"optimizer": "adamw_8bit", "gradient_checkpointing": "on",
                  "lora_dropout": 0.05, "lora_input_cast": True},
    "adamw_8bit": {"optimizer": "adamw_8bit"},
    "lora_dropout_0.05": {"lora_dropout": 0.05},
    "every_layer_checkpointed": {"gradient_checkpointing": "on"},
}


def main(argv: list[str] | None = None) -> dict:
    import torch
    import transformers

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU plumbing check, tiny architecture")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--archs", default="medium,small")
    p.add_argument("--ablations", default=",".join(ABLATIONS),
                   help="comma-separated names of ABLATIONS (medium); '' for none")
    p.add_argument("--budget-s", type=float, default=1e9,
                   help="skip the remaining ablations once this many seconds have passed")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    t_begin = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    archs = ["tiny"] if args.tiny else args.archs.split(",")
    steps, warmup = (2, 1) if args.tiny else (args.steps, args.warmup)
    out_path = Path(args.out) if args.out else (
        Path(tempfile.gettempdir()) / "whisper_ft_tiny.json" if args.tiny
        else ROOT / "bench" / "results" / "whisper_ft.json")
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("peft", "bitsandbytes"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    result: dict = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else
        f"CPU ({platform.machine()})", "cap_gib": CAP / GiB, "batch": 8,
        "input": "30 s log-mel windows (80 x 3000), 64-token transcripts, random weights",
        "versions": versions, "steps_timed": steps, "warmup_steps": warmup,
        "timing": "wall time of the timed steps between two synchronisations, over their "
                  "number; losses logged every 5 steps on every path",
        "results": {}}

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1))  # partial, in case of a time limit

    for arch in archs:
        r: dict = {}
        result["results"][arch] = r
        r["studio"] = measure(studio_trainer, arch, device, warmup, steps, CAP)
        save()
        if arch == "medium" and device == "cuda":
            r["plain_peft_lora"] = measure(plain_peft_lora, arch, device, warmup, steps, CAP)
            r["speedup_vs_plain_peft_lora"] = ratio(r["plain_peft_lora"], r["studio"])
            save()
        r["plain"] = measure(plain_trainer, arch, device, warmup, steps, CAP)
        if r["plain"].get("oom"):
            r["plain_uncapped"] = measure(plain_trainer, arch, device, warmup, steps, None)
        base = r["plain"] if not r["plain"].get("oom") else r.get("plain_uncapped", {})
        key = "speedup_vs_plain" if not r["plain"].get("oom") else \
            "speedup_vs_plain_uncapped"
        r[key] = ratio(base, r["studio"])
        r["studio_fits_12gib"] = not r["studio"].get("oom") and (
            r["studio"].get("peak_gib") is None or r["studio"]["peak_gib"] <= CAP / GiB)
        save()
    if "medium" in archs and device == "cuda":
        abl: dict = {}
        result["results"]["medium"]["ablations"] = abl
        for name in [a for a in args.ablations.split(",") if a]:
            if time.perf_counter() - t_begin > args.budget_s:
                abl[name] = {"skipped": "time budget"}
                continue
            abl[name] = measure(studio_trainer, "medium", device, warmup, steps, CAP,
                                **dict(ABLATIONS[name]))
            abl[name]["slowdown_vs_studio"] = ratio(abl[name],
                                                    result["results"]["medium"]["studio"])
            save()
    result["total_s"] = round(time.perf_counter() - t_begin, 1)
    save()
    print(json.dumps({a: {k: (v.get("s_per_step"), v.get("peak_gib")) if isinstance(v, dict)
                          else v for k, v in r.items() if k != "ablations"}
                      for a, r in result["results"].items()}, indent=1))
    return result


if __name__ == "__main__":
    main()
