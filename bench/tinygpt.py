"""Tiny GPT benchmark: training tokens/s of a ~10M-parameter model, and generation tokens/s with
and without the KV cache at a 512-token context.

Each part measures ours against a plain baseline in the same run:
- training: our step (AdamW, grad clipping; on CUDA bf16 autocast and fused AdamW) against the
  same loop in plain fp32 (on CPU the two are the same code path, so only ours is measured);
- generation: `generate(use_cache=True)` (on CUDA its decode step is a replayed CUDA graph)
  against `generate(use_cache=False)`, which re-runs the whole sequence for every new token;
  all must give the same tokens (greedy).

Token ids are random: throughput does not depend on the text. Run it once per device; results
for each device are merged into one JSON file:

    python bench/tinygpt.py --device cpu                 # here (2 shared cores: short)
    python bench/tinygpt.py --device cuda --budget 12GiB # the GPU machine, a 12 GB card emulated
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from studio.config import format_bytes, parse_size  # noqa: E402
from studio.devices import emulate_card  # noqa: E402
from tabs.tinygpt.model import GPT, GPTConfig, generate  # noqa: E402
from tabs.tinygpt.train import train_step  # noqa: E402

# nanoGPT's "baby GPT" shape (6 layers, 6 heads, 384 wide) with a 2048-token BPE vocabulary.
MODEL = dict(vocab_size=2048, n_layer=6, n_head=6, n_embd=384, pos="rope")
PLAN = {  # per device: training batch, timed steps; generation prompt/new tokens and batches
    "cpu": dict(batch=8, context=256, warmup=1, steps=3, prompt=480, new=32, gen_batches=[1]),
    "cuda": dict(batch=32, context=256, warmup=5, steps=20, prompt=448, new=64,
                 gen_batches=[1, 16]),
}


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_train(device: str, plan: dict, amp: bool) -> dict:
    """Tokens/s of full training steps (forward, backward, clip, AdamW)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=plan["context"], **MODEL)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device == "cuda" and amp)
    autocast = partial(torch.autocast, "cuda", dtype=torch.bfloat16) if amp else nullcontext
    B, T = plan["batch"], plan["context"]
    x = torch.randint(0, MODEL["vocab_size"], (B, T), device=device)
    y = torch.randint(0, MODEL["vocab_size"], (B, T), device=device)
    for _ in range(plan["warmup"]):
        train_step(model, opt, x, y, autocast)
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(plan["steps"]):
        loss = train_step(model, opt, x, y, autocast)
    loss.item()
    sync(device)
    seconds = time.perf_counter() - t0
    out = {"params": model.num_params(), "batch": B, "context": T, "steps": plan["steps"],
           "seconds": round(seconds, 3),
           "tokens_per_s": round(B * T * plan["steps"] / seconds, 1),
           "precision": "bf16 autocast" if amp else "fp32"}
    if device == "cuda":
        out["peak_memory"] = format_bytes(torch.cuda.max_memory_allocated())
    return out


REPEATS = {"cpu": 1, "cuda": 5}


def bench_generate(device: str, plan: dict, batch: int) -> dict:
    """Greedy generation at a 512-token context, with and without the KV cache.

    On CUDA the cached path replays its decode step as a CUDA graph; the graph is captured by
    the first call for these shapes (timed apart as `graph_capture_call`) and reused after,
    as in the app, where one loaded model serves many requests. The plain cached loop
    (`with_cache_no_graph`) is timed too, to show what the graph adds.
    """
    torch.manual_seed(0)
    context = plan["prompt"] + plan["new"]
    model = GPT(GPTConfig(block_size=context, **MODEL)).to(device).eval()
    prompt = torch.randint(0, MODEL["vocab_size"], (batch, plan["prompt"]), device=device)
    generate(model, prompt[:, :32], 8, temperature=0, cuda_graph=False)  # warm up kernels
    generate(model, prompt[:, :32], 8, temperature=0, use_cache=False)
    result, tokens = {}, {}
    if device == "cuda":
        sync(device)
        t0 = time.perf_counter()
        generate(model, prompt, plan["new"], temperature=0)  # captures the graph
        sync(device)
        result["graph_capture_call"] = {"seconds": round(time.perf_counter() - t0, 3)}
    variants = [("with_cache", dict(use_cache=True)),
                ("without_cache", dict(use_cache=False))]
    if device == "cuda":
        variants.insert(1, ("with_cache_no_graph", dict(use_cache=True, cuda_graph=False)))
    for name, kwargs in variants:
        runs = []
        for _ in range(REPEATS[device]):  # the median: single runs swing by 2x on this machine
            sync(device)
            t0 = time.perf_counter()
            tokens[name] = generate(model, prompt, plan["new"], temperature=0, **kwargs)
            sync(device)
            runs.append(time.perf_counter() - t0)
        seconds = statistics.median(runs)
        result[name] = {"seconds": round(seconds, 3), "runs": [round(r, 3) for r in runs],
                        "tokens_per_s": round(batch * plan["new"] / seconds, 1)}
    reference = tokens["without_cache"]
    result.update(batch=batch, prompt_tokens=plan["prompt"], new_tokens=plan["new"],
                  context=context, precision="fp32",
                  cuda_graph=device == "cuda",
                  same_tokens=all(bool(torch.equal(t, reference)) for t in tokens.values()),
                  speedup=round(result["with_cache"]["tokens_per_s"]
                                / result["without_cache"]["tokens_per_s"], 2))
    return result


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), required=True)
    ap.add_argument("--budget", default="12GiB", help="CUDA: emulate a card of this size")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "tinygpt.json"))
    args = ap.parse_args(argv)
    device, plan = args.device, PLAN[args.device]
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device")
        emulate_card(parse_size(args.budget))
    t_start = time.perf_counter()
    entry = {"device": device_name(device), "torch": torch.__version__,
             "python": platform.python_version(),
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if device == "cuda":
        entry["emulated_card"] = args.budget
        entry["train_ours"] = bench_train(device, plan, amp=True)
        entry["train_baseline_fp32"] = bench_train(device, plan, amp=False)
        entry["train_speedup_vs_fp32"] = round(entry["train_ours"]["tokens_per_s"]
                                               / entry["train_baseline_fp32"]["tokens_per_s"], 2)
    else:
        entry["train_ours"] = bench_train(device, plan, amp=False)
    entry["generate"] = [bench_generate(device, plan, b) for b in plan["gen_batches"]]
    entry["bench_seconds"] = round(time.perf_counter() - t_start, 1)

    out = Path(args.out)
    data = json.loads(out.read_text()) if out.exists() else {}
    data.setdefault("name", "tinygpt")
    data["what"] = ("Tiny GPT ~10M params (6 layers, 6 heads, width 384, BPE vocab 2048, RoPE): "
                    "training tokens/s, and greedy generation tokens/s with vs without the KV "
                    "cache at a 512-token context (target: >= 5x with the cache)")
    data.setdefault("runs", {})[device] = entry
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(entry, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
