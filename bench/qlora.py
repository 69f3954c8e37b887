"""QLoRA training benchmark: the plain recipe against the studio's trainer, in one run, on random
weights of the Llama-3.1-8B architecture, batch 1, bf16 autocast (as Trainer(bf16=True) runs).

Plain recipe (the issue's baseline): NF4 + double quant, ``prepare_model_for_kbit_training``
(gradient checkpointing, fp32 upcast of norms, embeddings and head), LoRA r16 on all linear
layers, paged 8-bit AdamW. Studio: ``tabs.qlora.train.prepare_model`` with the job's defaults
(no fp32 upcast, Liger Kernel's fused linear cross-entropy, each decoder layer compiled with its
4-bit matmuls dequantized inside (tabs.qlora.nf4), reentrant checkpointing, activations
offloaded to CPU RAM when the estimate needs it) and the job's forward context.

For each path: peak allocated VRAM and tokens/s at sequence 2048 (uncapped, so the plain path's
peak is seen even where it would not fit), then, under a 12 GiB emulated card, the longest
sequence that trains a step. The studio's "will it fit?" estimate is recorded next to every
measured studio peak, and both paths' loss on one fixed batch, so a faster path cannot silently
compute something else.

    python bench/qlora.py                      # GPU machine: writes bench/results/qlora.json
    python bench/qlora.py --base /dev/shm/l8b  # reuse (or create) the random 8B folder there
    python bench/qlora.py --tiny               # CPU smoke test of the plumbing (tiny model)
    python bench/qlora.py --quick ...          # speed at 2048 only, both compile scopes

The headline speed-up is the lower of two measurements: each path in its own phase, and both
(all) resident in alternating rounds (medians).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GiB = 1024**3
CAP = 12 * GiB


def make_base(folder: Path, tiny: bool) -> Path:
    """Random weights of the real architecture (or a tiny Llama) saved as a model folder."""
    import torch

    if (folder / "config.json").is_file():
        return folder
    if tiny:
        from tabs.qlora.tiny import make_tiny_base

        return make_tiny_base(folder)
    from transformers import LlamaForCausalLM

    from bench.llm import llama31_8b_config
    from studio.llm.testing import build_tokenizer

    torch.manual_seed(0)
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        model = LlamaForCausalLM(llama31_8b_config())
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(folder)
    build_tokenizer("llama3.1").save_pretrained(folder)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return folder


def studio_config(folder: Path, seq: int, offload: str = "auto", **overrides):
    """The job's defaults for a bench run (dropout 0 like the plain recipe, so both paths
    compute the same function)."""
    from tabs.qlora.config import QLoRAConfig

    return QLoRAConfig(base_model=str(folder), lora_r=16, lora_alpha=32, lora_dropout=0.0,
                       max_seq_length=seq, gradient_checkpointing=True,
                       offload_activations=offload, **overrides)


def optimizer(model, device: str, kind: str = "paged_adamw_8bit"):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if device == "cuda" and kind == "adamw_torch_fused":
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    if device == "cuda":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=1e-4)
    return torch.optim.AdamW(params, lr=1e-4)


def build_plain(folder: Path, device: str):
    """The issue's plain recipe; returns (model, optimizer, notes)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from tabs.qlora import train

    cfg = studio_config(folder, 2048)
    four_bit = device == "cuda"
    _, model = train.load_base(cfg, device, train.compute_dtype(cfg, device), four_bit)
    if four_bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model.gradient_checkpointing_enable()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    model.train()
    return model, optimizer(model, device), ["prepare_model_for_kbit_training + peft"]


def build_studio_path(folder: Path, device: str, offload: bool, opt: str | None = None,
                      scope: str | None = None, **overrides):
    """The job's own model preparation (tabs.qlora.train.prepare_model) and the optimizer the
    job would pick (tabs.qlora.estimate.optimizer_name) unless `opt` names one; `scope` picks
    what is compiled (default: the job's)."""
    from tabs.qlora import train
    from tabs.qlora.estimate import optimizer_name

    cfg = studio_config(folder, 2048, "on" if offload else "off", **overrides)
    four_bit = device == "cuda"
    _, model, notes = train.prepare_model(cfg, device, train.compute_dtype(cfg, device),
                                          four_bit, offload, scope or train.COMPILE_SCOPE)
    model.train()
    opt = opt or optimizer_name(cfg, device == "cuda", offload)
    return model, optimizer(model, device, opt), notes + [f"optimizer: {opt}"]


VARIANTS = {  # ablations of the studio path at 2048 (--variants): what each feature buys.
    # Order matters: Liger's eager RoPE patch is module-global, so the uncompiled Liger run
    # comes last (after it, compiled attention would trace Liger's Triton RoPE).
    "paged_8bit": ({}, "paged_adamw_8bit"),
    "compile_blocks_only": ({"scope": "blocks"}, None),
    "no_compile_no_fused": ({"compile_layers": "off", "fused_kernels": "off"}, None),
    "no_compile": ({"compile_layers": "off"}, None),
}


def run_variants(folder: Path, device: str, tiny: bool) -> dict:
    out = {}
    seq = 128 if tiny else 2048
    for name, (overrides, opt_kind) in VARIANTS.items():
        model, opt, notes = build_studio_path(folder, device, False, opt_kind, **overrides)
        r = measure(model, opt, seq, model.config.vocab_size, device, steps=2 if tiny else 4,
                    offload=False, warmup=2)
        out[name] = {"notes": notes, **r}
        print(name, json.dumps(out[name]), flush=True)
        del model, opt
        free(device)
    return out


def step(model, opt, ids, offload: bool) -> float:
    """One training step as the job runs it: bf16 autocast on CUDA, the forward under the
    studio's activation context (a no-op for the plain path, which passes offload=False)."""
    import torch

    from tabs.qlora.train import activation_context

    cuda = ids.is_cuda
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    with amp, activation_context(offload):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.item())


def batch(seq: int, vocab: int, device: str):
    import torch

    g = torch.Generator().manual_seed(seq)
    return torch.randint(0, vocab, (1, seq), generator=g).to(device)


def free(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def measure(model, opt, seq: int, vocab: int, device: str, steps: int, offload: bool,
            warmup: int = 1) -> dict:
    """Peak allocated VRAM and tokens/s over `steps` steps at `seq` (after `warmup` steps);
    an out-of-memory error is a result ("fits": false), anything else is raised."""
    import torch

    from studio.devices import is_oom

    ids = batch(seq, vocab, device)
    cuda = device == "cuda"
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup):
            step(model, opt, ids, offload)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        losses = [step(model, opt, ids, offload) for _ in range(steps)]
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - an OOM is a result here, anything else is not
        if not is_oom(e):
            raise
        opt.zero_grad(set_to_none=True)
        del e
        free(device)
        return {"seq": seq, "fits": False}
    peak = torch.cuda.max_memory_allocated() / GiB if cuda else None
    return {"seq": seq, "fits": True, "peak_gib": peak, "tokens_per_s": seq * steps / dt,
            "s_per_step": dt / steps, "last_loss": losses[-1]}


def fixed_batch_loss(model, vocab: int, device: str) -> float:
    """Loss on one fixed batch (no update) under the training forward, to check both paths
    compute the same thing (the fused loss only runs in training mode)."""
    import torch

    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, vocab, (1, 256), generator=g).to(device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" \
        else contextlib.nullcontext()
    with torch.no_grad(), amp:
        return float(model(input_ids=ids, labels=ids).loss.item())


def longest(model, opt, vocab: int, device: str, start: int, limit: int, grain: int,
            offload: bool, estimate_at=None) -> tuple[int, list[dict]]:
    """The longest sequence (multiple of `grain`, up to `limit`) that trains one step under the
    current cap: doubling from `start`, then bisection. Returns it and every probe."""
    probes: list[dict] = []

    def fits(seq: int) -> bool:
        r = measure(model, opt, seq, vocab, device, steps=1, offload=offload, warmup=0)
        if estimate_at is not None:
            r["estimate_gib"] = estimate_at(seq)
        probes.append(r)
        free(device)
        return r["fits"]

    lo, hi = 0, None
    seq = start
    while seq <= limit:
        if fits(seq):
            lo, seq = seq, seq * 2
        else:
            hi = seq
            break
    if hi is None:
        return lo, probes
    while hi - lo > grain:
        mid = (lo + hi) // 2 // grain * grain
        if mid <= lo:
            break
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo, probes


def cap(device: str, nbytes: int | None) -> None:
    """Emulate the 12 GB card (None: the whole card again)."""
    if device != "cuda":
        return
    import torch

    from studio.devices import emulate_card

    if nbytes is None:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    else:
        emulate_card(nbytes)


def profile_step(model, opt, vocab: int, device: str, offload: bool, path: Path) -> dict:
    """torch.profiler over one studio step: GPU kernel time against wall time, and the top
    kernels, so a reader sees where the step goes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    ids = batch(2048, vocab, device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        step(model, opt, ids, offload)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    path.write_text(events.table(sort_by="cuda_time_total", row_limit=25) + "\n\n"
                    + events.table(sort_by="self_cpu_time_total", row_limit=25))
    kernel_us = sum(e.self_device_time_total for e in events
                    if e.device_type == torch.autograd.DeviceType.CUDA)
    return {"wall_s": wall, "gpu_kernel_s": kernel_us / 1e6, "table": str(path)}


def run_plain(folder: Path, device: str, tiny: bool, quick: bool = False) -> dict:
    model, opt, notes = build_plain(folder, device)
    vocab = model.config.vocab_size
    seq = 128 if tiny else 2048
    out = {"path": "plain", "notes": notes,
           "fixed_batch_loss": fixed_batch_loss(model, vocab, device),
           f"at_{seq}": measure(model, opt, seq, vocab, device, steps=2 if tiny else 4,
                                offload=False)}
    if quick:
        del model, opt
        free(device)
        return out
    cap(device, CAP)
    out["longest_seq"], out["longest_probes"] = longest(
        model, opt, vocab, device, start=64 if tiny else 512, limit=256 if tiny else 8192,
        grain=64 if tiny else 256, offload=False)
    cap(device, None)
    del model, opt
    free(device)
    return out


def interleaved(folder: Path, device: str, tiny: bool, contenders: dict, rounds: int = 3) -> dict:
    """Tokens/s of the plain path and each contender (name -> (model, optimizer, offload)) with
    all models resident, in alternating rounds, medians: the step is launch-bound on the H100
    (see the profile), so host noise between separate phases would otherwise swamp the ratio.
    "speedup" is the "studio" contender's."""
    import statistics

    seq = 128 if tiny else 2048
    plain_model, plain_opt, _ = build_plain(folder, device)
    vocab = plain_model.config.vocab_size
    everyone = {"plain": (plain_model, plain_opt, False), **contenders}
    times: dict[str, list[float]] = {name: [] for name in everyone}
    for r in range(rounds):
        for name, (model, opt, offload) in everyone.items():
            m = measure(model, opt, seq, vocab, device, steps=2 if tiny else 3,
                        offload=offload, warmup=1 if r == 0 else 0)
            times[name].append(m["s_per_step"])
    del plain_model, plain_opt, everyone
    free(device)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"seq": seq, "rounds": rounds, "s_per_step": times}
    for name in times:
        out[f"{name}_tokens_per_s"] = seq / med[name]
        if name != "plain":
            out["speedup" if name == "studio" else f"speedup_{name}"] = med["plain"] / med[name]
    return out


def run_studio(folder: Path, device: str, tiny: bool, profile_to: Path | None,
               quick: bool = False) -> dict:
    from tabs.qlora.estimate import estimate, fused_kernels_usable, load_arch

    arch = load_arch(str(folder))
    seq = 128 if tiny else 2048
    cuda = device == "cuda"
    fused = fused_kernels_usable(studio_config(folder, seq), cuda)

    def estimate_at(offload: bool):
        return lambda s: estimate(arch, seq_len=s, micro_batch=1, rank=16, four_bit=cuda,
                                  paged_8bit=cuda, fused_ce=fused, offload=offload,
                                  suggest=False).total / GiB

    # the job's 'auto' decision at 2048 under a 12 GiB budget (off when it fits without)
    from tabs.qlora.estimate import resolve_offload

    off_2048 = resolve_offload(studio_config(folder, seq), arch, CAP, cuda)
    model, opt, notes = build_studio_path(folder, device, off_2048)
    vocab = model.config.vocab_size
    out = {"path": "studio", "notes": notes, "offload_at_2048": off_2048,
           "fixed_batch_loss": fixed_batch_loss(model, vocab, device)}
    out[f"at_{seq}"] = measure(model, opt, seq, vocab, device, steps=2 if tiny else 4,
                               offload=off_2048, warmup=2)  # 2: compiles with and without grad
    out[f"at_{seq}"]["estimate_gib"] = estimate_at(off_2048)(seq)
    if profile_to is not None and cuda:
        out["profile_at_2048"] = profile_step(model, opt, vocab, device, off_2048, profile_to)
    if quick:  # speed only: the interleaved comparison, with the other compile scope beside
        from tabs.qlora.train import COMPILE_SCOPE

        other = "blocks" if COMPILE_SCOPE == "layers" else "layers"
        m2, o2, _ = build_studio_path(folder, device, off_2048, scope=other)
        measure(m2, o2, seq, vocab, device, steps=1, offload=off_2048, warmup=2)
        out["interleaved"] = interleaved(folder, device, tiny, {
            "studio": (model, opt, off_2048), f"scope_{other}": (m2, o2, off_2048)})
        del model, opt, m2, o2
        free(device)
        return out
    # the same model with activations offloaded (what 'auto' picks for long sequences), and
    # the optimizer the job picks then
    from tabs.qlora.estimate import optimizer_name

    opt = optimizer(model, device, optimizer_name(studio_config(folder, seq), cuda, True))
    out[f"at_{seq}_offloaded"] = measure(model, opt, seq, vocab, device,
                                         steps=2 if tiny else 4, offload=True)
    out[f"at_{seq}_offloaded"]["estimate_gib"] = estimate_at(True)(seq)
    cap(device, CAP)
    out["longest_seq"], out["longest_probes"] = longest(
        model, opt, vocab, device, start=128 if tiny else 4096, limit=512 if tiny else 32768,
        grain=64 if tiny else 1024, offload=True, estimate_at=estimate_at(True))
    cap(device, None)
    opt = optimizer(model, device, optimizer_name(studio_config(folder, seq), cuda, off_2048))
    out["interleaved"] = interleaved(folder, device, tiny, {"studio": (model, opt, off_2048)})
    del model, opt
    free(device)
    return out


def main(argv: list[str] | None = None) -> dict:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke test of the plumbing")
    p.add_argument("--base", default=None, help="model folder to reuse or create")
    p.add_argument("--profile", default=None, help="write a profiler table of one studio step")
    p.add_argument("--out", default=None, help="results file")
    p.add_argument("--variants", action="store_true", help="also measure ablations at 2048")
    p.add_argument("--quick", action="store_true", help="speed at 2048 only (no longest "
                   "sequence search): plain, studio and the other compile scope, interleaved")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    out_path = Path(args.out) if args.out else (
        Path(tempfile.gettempdir()) / "qlora_tiny.json" if args.tiny
        else ROOT / "bench" / "results" / "qlora.json")
    import peft
    import transformers

    result: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else
                    platform.processor() or "cpu", "tiny": args.tiny,
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "peft": peft.__version__, "cap_gib": CAP / GiB,
                    "model": "tiny llama" if args.tiny else
                    "Llama-3.1-8B architecture, random weights"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_base(Path(args.base) if args.base else Path(tmp) / "base", args.tiny)
        t0 = time.perf_counter()
        result["plain"] = run_plain(folder, device, args.tiny, args.quick)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1))  # partial, in case of a time limit
        print(json.dumps(result["plain"]), flush=True)
        result["studio"] = run_studio(folder, device, args.tiny,
                                      Path(args.profile) if args.profile else None, args.quick)
        result["bench_seconds"] = time.perf_counter() - t0
        if args.variants:
            out_path.write_text(json.dumps(result, indent=1))
            result["variants"] = run_variants(folder, device, args.tiny)
    key = "at_128" if args.tiny else "at_2048"
    pl, st = result["plain"][key], result["studio"][key]
    if pl.get("fits") and st.get("fits"):  # headline: the lower of the two measurements
        result["speedup_interleaved"] = result["studio"]["interleaved"]["speedup"]
        result["speedup_separate_phases"] = st["tokens_per_s"] / pl["tokens_per_s"]
        result["speedup_tokens_per_s"] = min(result["speedup_interleaved"],
                                             result["speedup_separate_phases"])
    a, b = result["plain"]["fixed_batch_loss"], result["studio"]["fixed_batch_loss"]
    result["fixed_batch_loss_rel_diff"] = abs(a - b) / max(abs(a), 1e-9)
    result["loss_equal"] = result["fixed_batch_loss_rel_diff"] < 2e-3
    result["targets"] = {"peak_at_2048_gib_max": 8.0, "speedup_min": 1.5,
                         "longest_seq_min": 16384}
    if not args.tiny:
        result["meets"] = {
            "peak_at_2048": bool(st.get("fits") and st["peak_gib"] <= 8.0),
            "speedup": result.get("speedup_tokens_per_s", 0) >= 1.5,
            "longest_seq": result["studio"].get("longest_seq", 0) >= 16384}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
