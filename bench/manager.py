"""Model-manager benchmark: three real-architecture models cycled under a 12 GiB card.

On the GPU machine (random weights of the real architectures, saved to local folders first, so
cold loads read from disk exactly as a user's downloaded model would):
  * Llama-3.1-8B architecture, 4-bit NF4 (bitsandbytes, double quant)      ~5.4 GiB
  * SD 1.5 UNet + VAE, fp16 (diffusers)                                      ~1.8 GiB
  * Qwen2.5-7B architecture, 4-bit NF4                                      ~5.0 GiB
50 requests cycle across them in a pattern that forces evictions, each doing a small real forward
pass. Reported: OOM count, peak allocated vs the cap, cold load vs warm reload per model.

The plain baseline, in the same run: what a script does without a manager — keep every model it
has loaded (how many requests before the first OOM), and "free everything and load from disk on
every switch" (seconds per switch).

    python bench/manager.py                 # GPU machine -> bench/results/manager.json
    python bench/manager.py --tiny          # CPU smoke test of the same code with tiny configs
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from studio.devices import CpuProbe, CudaProbe, default_budget, emulate_card, is_oom  # noqa: E402
from studio.models import ModelManager, ModelSpec, PinnedSwap  # noqa: E402

GiB = 1024**3
# the decoder LLMs' shapes for a CPU smoke run (--tiny)
TINY_LLM = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)


def llama8b_config(tiny: bool):
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(**TINY_LLM)
    return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       max_position_embeddings=131072, rope_theta=500000.0,
                       rms_norm_eps=1e-5, tie_word_embeddings=False,
                       rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 8192})


def qwen7b_config(tiny: bool):
    from transformers import Qwen2Config

    if tiny:
        return Qwen2Config(**TINY_LLM)
    return Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       max_position_embeddings=32768, rope_theta=1000000.0,
                       rms_norm_eps=1e-6, tie_word_embeddings=False)


def sd15_unet_config(tiny: bool) -> dict:
    if tiny:
        return dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                    block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D",
                                                                   "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                    attention_head_dim=4, norm_num_groups=8)
    return dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                  "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                "CrossAttnUpBlock2D"),
                cross_attention_dim=768, attention_head_dim=8)


def sd15_vae_config(tiny: bool) -> dict:
    if tiny:
        return dict(in_channels=3, out_channels=3, latent_channels=4,
                    block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                    down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2)
    return dict(in_channels=3, out_channels=3, latent_channels=4,
                block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)


def prepare(workdir: Path, tiny: bool, device: str) -> dict[str, Path]:
    """Random weights of each architecture, saved as a user's downloaded folder would be."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoModelForCausalLM

    out = {}
    dtype = torch.bfloat16
    for name, cfg in (("llama8b", llama8b_config(tiny)), ("qwen7b", qwen7b_config(tiny))):
        d = workdir / name
        out[name] = d
        if (d / "config.json").exists():
            continue
        t = time.perf_counter()
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        model.save_pretrained(d, max_shard_size="5GB")
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        print(f"prepared {name} in {time.perf_counter() - t:.1f} s", flush=True)
    d = workdir / "sd15"
    out["sd15"] = d
    if not (d / "unet" / "config.json").exists():
        with torch.device(device):
            UNet2DConditionModel(**sd15_unet_config(tiny)).to(torch.float16).save_pretrained(
                d / "unet")
            AutoencoderKL(**sd15_vae_config(tiny)).to(torch.float16).save_pretrained(d / "vae")
        gc.collect()
    return out


def llm_spec(key: str, folder: Path, device: str, estimate: int) -> ModelSpec:
    import torch
    from transformers import AutoModelForCausalLM

    def load(dev):
        if device == "cuda":
            from transformers import BitsAndBytesConfig

            q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
            return AutoModelForCausalLM.from_pretrained(folder, quantization_config=q,
                                                        device_map="cuda", dtype=torch.bfloat16)
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)

    return ModelSpec(key, load=load, title=key, estimate=estimate, reserve=256 * 1024**2,
                     **PinnedSwap().spec_kwargs())


class SDPair(dict):
    """UNet + VAE as one manageable model; moves as one."""

    def to(self, device):
        for m in self.values():
            m.to(device)
        return self


def sd_spec(folder: Path, device: str, estimate: int) -> ModelSpec:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    dtype = torch.float16 if device == "cuda" else torch.float32

    def load(dev):
        return SDPair(unet=UNet2DConditionModel.from_pretrained(folder / "unet", dtype=dtype)
                      .to(dev),
                      vae=AutoencoderKL.from_pretrained(folder / "vae", dtype=dtype).to(dev))

    return ModelSpec("sd15", load=load, title="SD 1.5 UNet+VAE", estimate=estimate,
                     reserve=512 * 1024**2, **PinnedSwap().spec_kwargs())


def work(key: str, obj, device: str, tiny: bool) -> None:
    """A small real request on the loaded model: holds activations like a real one would."""
    import torch

    with torch.inference_mode():
        if key == "sd15":
            dtype = next(obj["unet"].parameters()).dtype
            side = 8 if tiny else 64
            lat = torch.randn(2, 4, side, side, device=device, dtype=dtype)
            ctx = torch.randn(2, 77, obj["unet"].config.cross_attention_dim, device=device,
                              dtype=dtype)
            obj["unet"](lat, torch.tensor([500], device=device), encoder_hidden_states=ctx)
            obj["vae"].decode(lat[:1] / 0.18215)
        else:
            ids = torch.randint(0, obj.config.vocab_size, (1, 64), device=device)
            obj(input_ids=ids)
    if device == "cuda":
        torch.cuda.synchronize()


def baseline_keep_all(folders, device, tiny, pattern) -> dict:
    """No manager: load each model on first use and keep it. Counts requests until OOM."""
    import torch

    loaded, served, error = {}, 0, ""
    specs = make_specs(folders, device)
    try:
        for key in pattern:
            if key not in loaded:
                loaded[key] = specs[key].load(device)
            work(key, loaded[key], device, tiny)
            served += 1
    except Exception as e:  # noqa: BLE001 - the OOM is what this baseline measures
        if not is_oom(e):
            raise
        error = f"{type(e).__name__}: out of memory"
    finally:
        loaded.clear()
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"requests_served_before_oom": served, "oom": bool(error), "error": error}


def baseline_reload(folders, device, tiny, pattern) -> dict:
    """No manager, no OOM: free everything and load from disk at every switch."""
    import torch

    specs = make_specs(folders, device)
    current_key, current, switch_times = None, None, []
    for key in pattern:
        if key != current_key:
            current = None
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            t = time.perf_counter()
            current = specs[key].load(device)
            switch_times.append(time.perf_counter() - t)
            current_key = key
        work(key, current, device, tiny)
    current = None
    gc.collect()
    return {"switches": len(switch_times),
            "seconds_per_switch_mean": sum(switch_times) / len(switch_times)}


def make_specs(folders, device):
    # Size hints for the first load only; the manager measures the real size.
    est = {"llama8b": int(5.6 * GiB), "qwen7b": int(5.2 * GiB), "sd15": int(1.9 * GiB)}
    if device != "cuda":
        est = dict.fromkeys(est, 0)
    specs = {"llama8b": llm_spec("llama8b", folders["llama8b"], device, est["llama8b"]),
             "qwen7b": llm_spec("qwen7b", folders["qwen7b"], device, est["qwen7b"]),
             "sd15": sd_spec(folders["sd15"], device, est["sd15"])}
    if device != "cuda":
        for spec in specs.values():
            spec.reserve = 0  # tiny smoke-test models need no activation headroom
    return specs


def request_pattern(n: int) -> list[str]:
    # Three models that cannot all fit: each switch to the one not resident forces an eviction.
    cycle = ["llama8b", "sd15", "qwen7b", "sd15", "llama8b", "llama8b", "qwen7b", "sd15"]
    return [cycle[i % len(cycle)] for i in range(n)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="tiny configs on CPU (smoke test)")
    ap.add_argument("--cap-gib", type=float, default=12.0)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--budget-bytes", type=int, default=0, help="CPU smoke test only")
    ap.add_argument("--workdir", default="/tmp/studio-bench-models")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "manager.json"))
    args = ap.parse_args(argv)

    import torch

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    workdir = Path(args.workdir) / ("tiny" if args.tiny else "full")
    folders = prepare(workdir, args.tiny, device)
    pattern = request_pattern(args.requests)

    if device == "cuda":
        emulate_card(int(args.cap_gib * GiB))  # as on a 12 GB card: allocations above fail
        probe = CudaProbe(0)
        cap = int(args.cap_gib * GiB)
        budget = cap - int(0.75 * GiB)  # the studio's default: card minus a desktop reserve
        device_name = probe.name
    else:
        probe = CpuProbe()
        cap = budget = args.budget_bytes or default_budget(probe)
        device_name = "CPU (smoke test)"

    result = {"device": device_name, "cap_bytes": cap, "budget_bytes": budget,
              "requests": len(pattern), "torch": torch.__version__}

    # ---- baseline 1: keep everything loaded (what a plain script does) ----
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result["baseline_keep_all"] = baseline_keep_all(folders, device, args.tiny, pattern)
    print("baseline keep-all:", result["baseline_keep_all"], flush=True)

    # ---- the studio's manager ----
    mgr = ModelManager(budget=budget, probe=probe, warm_bytes=48 * GiB if device == "cuda"
                       else 4 * GiB)
    for spec in make_specs(folders, device).values():
        mgr.register(spec)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ooms, log = 0, []
    t_all = time.perf_counter()
    for i, key in enumerate(pattern):
        loads0, restores0 = mgr.load_counts.get(key, 0), mgr.stats(key).get("restores", 0)
        t = time.perf_counter()
        try:
            with mgr.use(key) as obj:
                acquire = time.perf_counter() - t
                mgr.call_with_oom_retry(key, lambda m, k=key: work(k, m, device, args.tiny))
            del obj  # hold no reference once the request is done, or eviction cannot free it
        except Exception as e:  # noqa: BLE001 - counted, not hidden
            if is_oom(e) or "Out of GPU memory" in str(e):
                ooms += 1
                log.append({"i": i, "key": key, "error": str(e)[:200]})
                continue
            raise
        how = ("cold" if mgr.load_counts.get(key, 0) > loads0 else
               "warm" if mgr.stats(key).get("restores", 0) > restores0 else "hit")
        log.append({"i": i, "key": key, "how": how, "acquire_s": round(acquire, 4),
                    "allocated": probe.allocated()})
        print(f"{i:2d} {key:8s} {how:5s} {acquire:7.3f} s", flush=True)
    total = time.perf_counter() - t_all
    peak = probe.peak()
    per_model = {}
    for key in ("llama8b", "sd15", "qwen7b"):
        cold = [r["acquire_s"] for r in log if r.get("key") == key and r.get("how") == "cold"]
        warm = [r["acquire_s"] for r in log if r.get("key") == key and r.get("how") == "warm"]
        per_model[key] = {
            "measured_bytes": next((r.size for r in mgr.loaded() if r.key == key), None)
            or mgr.stats(key).get("size"),
            "cold_load_s": round(cold[0], 3) if cold else None,
            "cold_loads": len(cold),
            "warm_reload_s_mean": round(sum(warm) / len(warm), 3) if warm else None,
            "warm_reload_s_max": round(max(warm), 3) if warm else None,
            "warm_reloads": len(warm),
        }
    result["studio"] = {
        "oom_count": ooms, "peak_allocated_bytes": peak,
        "peak_within_cap": peak is None or peak <= cap, "total_seconds": round(total, 2),
        "models": per_model, "leaks": mgr.leaks, "decisions": mgr.history[-10:],
        "requests": log,
    }
    mgr.evict_all()

    # ---- baseline 2: free all and reload from disk at each switch (first 6 requests) ----
    result["baseline_reload_every_switch"] = baseline_reload(folders, device, args.tiny,
                                                             pattern[:6])
    switches = sum(1 for a, b in zip(pattern, pattern[1:], strict=False) if a != b) + 1
    base_s = result["baseline_reload_every_switch"]["seconds_per_switch_mean"]
    result["comparison"] = {
        "switches_in_pattern": switches,
        "baseline_reload_seconds_for_pattern_estimate": round(base_s * switches, 2),
        "studio_seconds_for_pattern": round(total, 2),
        "speedup": round(base_s * switches / total, 2) if total else None,
        "note": "baseline = measured mean seconds per switch x switches in the same pattern",
    }
    if per_model["llama8b"]["warm_reload_s_max"] is not None:
        result["target_warm_reload_8b_le_1s"] = per_model["llama8b"]["warm_reload_s_max"] <= 1.0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not args.tiny:
        Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "studio"}, indent=1, default=str))
    print(json.dumps({k: v for k, v in result["studio"].items() if k != "requests"}, indent=1,
                     default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
