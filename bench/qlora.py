"""QLoRA training benchmark: the plain recipe against the studio's trainer, in one run, on random
weights of the Llama-3.1-8B architecture, batch 1, under a 12 GiB emulated card.

Plain recipe (the issue's baseline): NF4 + double quant, ``prepare_model_for_kbit_training``
(gradient checkpointing, fp32 upcast of embeddings/head), LoRA r16 on all linear layers, paged
8-bit AdamW. Studio: the same, but through ``tabs.qlora.train.load_base/add_lora`` (no fp32
upcast, non-reentrant checkpointing). For each: peak allocated VRAM and tokens/s at sequence
2048, the longest sequence (step 1024) that trains under the cap, and the studio's "will it
fit?" estimate next to the measured peak. Both paths' loss on one fixed batch is recorded so a
faster path cannot silently change the numbers.

    python bench/qlora.py           # GPU machine: writes bench/results/qlora.json
    python bench/qlora.py --tiny    # CPU smoke test of the plumbing (tiny model, no 4-bit)
"""

from __future__ import annotations

import argparse
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


def make_base(folder: Path, tiny: bool) -> Path:
    """Random weights of the real architecture (or a tiny Llama) saved as a model folder."""
    import torch

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


def studio_config(folder: Path, seq: int):
    from tabs.qlora.config import QLoRAConfig

    return QLoRAConfig(base_model=str(folder), lora_r=16, lora_alpha=32, lora_dropout=0.0,
                       max_seq_length=seq, gradient_checkpointing=True)


def build(kind: str, folder: Path, device: str):
    """(model, optimizer) for one path."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from tabs.qlora import train

    cfg = studio_config(folder, 2048)
    four_bit = device == "cuda"
    dtype = train.compute_dtype(cfg, device)
    _, model = train.load_base(cfg, device, dtype, four_bit)
    if kind == "plain":
        if four_bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        else:
            model.gradient_checkpointing_enable()
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                 target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    else:
        model = train.add_lora(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    if four_bit:
        import bitsandbytes as bnb

        opt = bnb.optim.PagedAdamW8bit(params, lr=1e-4)
    else:
        opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    return model, opt


def step(model, opt, ids) -> float:
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.item())


def measure(model, opt, seq: int, vocab: int, device: str, steps: int) -> dict:
    """Peak allocated VRAM and tokens/s of `steps` training steps at `seq` (after 1 warm-up)."""
    import torch

    from studio.devices import is_oom

    g = torch.Generator().manual_seed(seq)
    ids = torch.randint(0, vocab, (1, seq), generator=g).to(device)
    cuda = device == "cuda"
    try:
        step(model, opt, ids)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(steps):
            step(model, opt, ids)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - an OOM is a result here, anything else is not
        if not is_oom(e):
            raise
        opt.zero_grad(set_to_none=True)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        return {"seq": seq, "fits": False}
    peak = torch.cuda.max_memory_allocated() / GiB if cuda else None
    return {"seq": seq, "fits": True, "peak_gib": peak, "tokens_per_s": seq * steps / dt}


def fixed_batch_loss(model, vocab: int, device: str) -> float:
    """Loss on one fixed batch (no update), to check both paths compute the same thing."""
    import torch

    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, vocab, (1, 256), generator=g).to(device)
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss.item())


def longest(model, opt, vocab: int, device: str, start: int, stop: int, step_len: int) -> int:
    """The longest sequence (multiple of step_len) that trains a step without OOM."""
    best, seq = 0, start
    while seq <= stop:
        if not measure(model, opt, seq, vocab, device, steps=1)["fits"]:
            break
        best, seq = seq, seq + step_len
    return best


def run_path(kind: str, folder: Path, device: str, tiny: bool) -> dict:
    import torch

    from tabs.qlora.estimate import estimate, load_arch

    model, opt = build(kind, folder, device)
    vocab = model.config.vocab_size
    seq = 128 if tiny else 2048
    out = {"path": kind, "fixed_batch_loss": fixed_batch_loss(model, vocab, device),
           f"at_{seq}": measure(model, opt, seq, vocab, device, steps=2 if tiny else 5)}
    out["longest_seq"] = longest(model, opt, vocab, device, start=256 if tiny else 4096,
                                 stop=512 if tiny else 32768, step_len=128 if tiny else 1024)
    if kind == "studio":
        arch = load_arch(str(folder))
        out["estimate_gib"] = estimate(arch, seq_len=seq, micro_batch=1, rank=16,
                                       four_bit=device == "cuda", paged_8bit=device == "cuda",
                                       suggest=False).total / GiB
    del model, opt
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> dict:
    import torch

    from studio.devices import emulate_card

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke test of the plumbing")
    p.add_argument("--out", default=None, help="results file")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    out_path = Path(args.out) if args.out else (
        Path(tempfile.gettempdir()) / "qlora_tiny.json" if args.tiny
        else ROOT / "bench" / "results" / "qlora.json")
    result: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else
                    platform.processor() or "cpu", "tiny": args.tiny,
                    "torch": torch.__version__, "cap_gib": None if args.tiny else 12}
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_base(Path(tmp) / "base", args.tiny)
        if device == "cuda":
            emulate_card(12 * GiB)
        result["plain"] = run_path("plain", folder, device, args.tiny)
        result["studio"] = run_path("studio", folder, device, args.tiny)
    key = "at_128" if args.tiny else "at_2048"
    pl, st = result["plain"][key], result["studio"][key]
    if pl.get("fits") and st.get("fits"):
        result["speedup_tokens_per_s"] = st["tokens_per_s"] / pl["tokens_per_s"]
    result["loss_equal"] = abs(result["plain"]["fixed_batch_loss"]
                               - result["studio"]["fixed_batch_loss"]) < 1e-2
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
