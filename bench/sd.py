"""SD benchmark: plain diffusers vs the studio, side by side in one run, under a 12 GiB cap.

Random weights of the real SD 1.5 and SDXL architectures (configs written inline: no hub), so
the numbers are honest throughput and memory, not image quality.

- SD 1.5 512x512, 20 steps with CFG: plain fp16 pipeline vs the studio's plan for the budget
  (`tabs.sd.generate.apply_plan`: compiled channels-last UNet with fused QKV), same seed; the
  outputs are compared.
- SDXL 1024x1024: plain fp16 pipeline (its VAE upcasts to fp32) vs the studio's plan
  (`plan_generation`: fp16-safe VAE, slicing/tiling/offload as the budget needs).
- LoRA training step (r8 attention, batch 1, 512): the diffusers example's step (VAE and text
  encoder every step, gradient checkpointing) vs the studio's (`tabs.sd.train`: latents and
  embeddings encoded once, checkpointing only if the estimate needs it, channels-last).

    python bench/sd.py                      # GPU machine, writes bench/results/sd.json
    python bench/sd.py --tiny --out /tmp/x  # CPU smoke test of the script itself
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GiB = 1024**3
PROMPT = "a photo of an astronaut riding a horse on the moon"


def sd15_configs(tiny: bool) -> dict:
    if tiny:
        return {"unet": dict(block_out_channels=(8, 16), layers_per_block=1, sample_size=16,
                             down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                             cross_attention_dim=32, norm_num_groups=4, attention_head_dim=4),
                "vae": dict(block_out_channels=[8, 16], norm_num_groups=4,
                            down_block_types=["DownEncoderBlock2D"] * 2,
                            up_block_types=["UpDecoderBlock2D"] * 2),
                "text": dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                             num_hidden_layers=2),
                "size": 32}
    return {
        "unet": dict(sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                     cross_attention_dim=768, attention_head_dim=8),
        "vae": dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                    down_block_types=["DownEncoderBlock2D"] * 4,
                    up_block_types=["UpDecoderBlock2D"] * 4, sample_size=512),
        "text": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                     num_hidden_layers=12, hidden_act="quick_gelu", projection_dim=768),
        "size": 512,
    }


def sdxl_configs(tiny: bool) -> dict:
    if tiny:
        return {"unet": dict(block_out_channels=(8, 16), layers_per_block=1, sample_size=16,
                             down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                             up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                             attention_head_dim=(2, 4), use_linear_projection=True,
                             addition_embed_type="text_time", addition_time_embed_dim=8,
                             transformer_layers_per_block=(1, 1),
                             projection_class_embeddings_input_dim=80, cross_attention_dim=64,
                             norm_num_groups=4),
                "vae": dict(block_out_channels=[8, 16], norm_num_groups=4,
                            down_block_types=["DownEncoderBlock2D"] * 2,
                            up_block_types=["UpDecoderBlock2D"] * 2, force_upcast=True),
                "text": dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                             num_hidden_layers=2),
                "text2": dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                              num_hidden_layers=2, projection_dim=32),
                "size": 32}
    return {
        "unet": dict(sample_size=128, layers_per_block=2, block_out_channels=(320, 640, 1280),
                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                       "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                     transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                     cross_attention_dim=2048, use_linear_projection=True,
                     addition_embed_type="text_time", addition_time_embed_dim=256,
                     projection_class_embeddings_input_dim=2816),
        "vae": dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                    down_block_types=["DownEncoderBlock2D"] * 4,
                    up_block_types=["UpDecoderBlock2D"] * 4, sample_size=1024,
                    scaling_factor=0.13025, force_upcast=True),
        "text": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                     num_hidden_layers=12, hidden_act="quick_gelu", projection_dim=768),
        "text2": dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                      num_hidden_layers=32, hidden_act="gelu", projection_dim=1280),
        "size": 1024,
    }


def tokenizer(tmp: Path):
    from transformers import CLIPTokenizer

    from tabs.sd.tiny import _write_clip_tokenizer

    _write_clip_tokenizer(tmp / "tok")
    return CLIPTokenizer.from_pretrained(tmp / "tok")


def build(arch: str, tiny: bool, device: str, dtype, tmp: Path):
    """A pipeline with random weights, built straight on the device in `dtype`."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = sd15_configs(tiny) if arch == "sd15" else sdxl_configs(tiny)
    text_common = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=0,
                       eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            unet = UNet2DConditionModel(**cfg["unet"])
            vae = AutoencoderKL(**cfg["vae"])
            te = CLIPTextModel(CLIPTextConfig(**cfg["text"], **text_common))
            te2 = (CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text2"], **text_common))
                   if arch == "sdxl" else None)
    finally:
        torch.set_default_dtype(prev)
    sched = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                        beta_schedule="scaled_linear")
    tok = tokenizer(tmp)
    if arch == "sd15":
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                       scheduler=sched, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2,
                                         tokenizer=tok, tokenizer_2=tok, unet=unet,
                                         scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe, cfg["size"]


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / GiB if device == "cuda" else None


def time_images(pipe, size: int, steps: int, device: str, warmup: int, runs: int) -> dict:
    """Seconds per image (20 steps, CFG 7) after warm-up, peak memory, and the last image."""
    import torch

    def one():
        g = torch.Generator("cpu").manual_seed(1234)
        return pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.0, height=size,
                    width=size, generator=g, output_type="np").images[0]

    t0 = time.perf_counter()
    for _ in range(warmup):
        one()
    sync(device)
    warm_s = time.perf_counter() - t0
    reset_peak(device)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        img = one()
        sync(device)
        times.append(time.perf_counter() - t)
    return {"s_per_image": min(times), "s_per_image_all": times, "peak_gib": peak(device),
            "warmup_s": warm_s, "image": img}


def compare(a, b) -> dict:
    import numpy as np

    fa, fb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both = np.isfinite(fa) & np.isfinite(fb)
    d = np.abs(fa - fb)[both]
    return {"mean_abs_diff": float(d.mean()) if d.size else None,
            "max_abs_diff": float(d.max()) if d.size else None,
            "nonfinite_pixels": int((~both).sum()), "pixel_std": float(fa[both].std())}


def bench_sd15_generation(args, device, dtype, tmp) -> dict:
    from tabs.sd.config import plan_generation
    from tabs.sd.generate import apply_plan

    pipe, size = build("sd15", args.tiny, device, dtype, tmp)
    pipe.to(device)
    plain = time_images(pipe, size, args.steps, device, warmup=1, runs=args.runs)
    plan = plan_generation("sd15", args.budget, device)
    if args.tiny:
        plan.compile_unet = False  # the CPU smoke test checks plumbing, not compile
    apply_plan(pipe, plan, device)
    ours = time_images(pipe, size, args.steps, device, warmup=3, runs=args.runs)
    same = compare(plain.pop("image"), ours.pop("image"))
    out = {"size": size, "steps": args.steps, "plain": plain, "studio": ours,
           "studio_plan": plan.describe(), "output_vs_plain": same,
           "speedup": plain["s_per_image"] / ours["s_per_image"]}
    del pipe
    return out


def bench_sdxl_generation(args, device, dtype, tmp) -> dict:
    import torch

    from tabs.sd.config import plan_generation
    from tabs.sd.generate import apply_plan

    pipe, size = build("sdxl", args.tiny, device, dtype, tmp)
    out: dict = {"size": size, "steps": args.steps}
    pipe.to(device)
    try:
        out["plain"] = time_images(pipe, size, args.steps, device, warmup=1, runs=2)
        out["plain"].pop("image")
    except torch.OutOfMemoryError as e:
        out["plain"] = {"error": f"out of memory under the cap: {str(e)[:200]}"}
    pipe.vae.to(dtype)  # an OOM inside the plain decode can leave it upcast
    reset_peak(device)
    # The studio loads the fp16-fix VAE (same architecture, no fp32 upcast needed); with random
    # weights that is this VAE with force_upcast off.
    pipe.vae.register_to_config(force_upcast=False)
    plan = plan_generation("sdxl", args.budget, device, size, size, 1, fp16_vae=None)
    apply_plan(pipe, plan, device)
    try:
        out["studio"] = time_images(pipe, size, args.steps, device, warmup=1, runs=2)
        out["studio"].pop("image")
    except torch.OutOfMemoryError as e:
        out["studio"] = {"error": f"out of memory under the cap: {str(e)[:200]}"}
    out["studio_plan"] = plan.describe() + " (fp16-fix VAE emulated: force_upcast off)"
    p = out["studio"].get("peak_gib")
    out["studio_within_budget"] = p is not None and p * GiB <= args.budget
    del pipe
    return out


def bench_training(args, device, dtype, tmp) -> dict:
    """s/step and peak of one LoRA step: diffusers example style vs the studio's loop."""
    import torch
    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from tabs.sd.config import SDTrainConfig, estimate_training
    from tabs.sd.train import UNET_TARGETS, predict, tokenize

    pipe, size = build("sd15", args.tiny, device, dtype, tmp)
    unet, vae, te, tok = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    del pipe
    for m in (unet, vae, te):
        m.requires_grad_(False)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    unet.add_adapter(LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian",
                                target_modules=UNET_TARGETS))
    if dtype != torch.float32:
        cast_training_params(unet, dtype=torch.float32)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator("cpu").manual_seed(0)
    pixels = (torch.rand((1, 3, size, size), generator=g) * 2 - 1).to(device, dtype)
    caption = "a photo of sks dog"
    amp = dtype != torch.float32

    def plain_step():
        with torch.no_grad():
            lat = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            emb = te(tokenize(tok, [caption], device))[0]
        noise = torch.randn_like(lat)
        t = torch.randint(0, 1000, (1,), device=device)
        noisy = sched.add_noise(lat, noise, t)
        with torch.autocast(device, dtype=dtype, enabled=amp):
            pred = unet(noisy, t, emb).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    with torch.no_grad():  # the studio encodes once
        dist = vae.encode(pixels).latent_dist
        mean, std = dist.mean, dist.std
        emb_cached = te(tokenize(tok, [caption], device))[0]

    def studio_step(channels_last: bool):
        lat = (mean + std * torch.randn_like(mean)) * vae.config.scaling_factor
        noise = torch.randn_like(lat)
        t = torch.randint(0, 1000, (1,), device=device)
        pred, target = predict(unet, sched, lat, noise, t, emb_cached, dtype, channels_last)
        torch.nn.functional.mse_loss(pred, target).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def measure(step_fn) -> dict:
        for _ in range(args.train_warmup):
            step_fn()
        sync(device)
        reset_peak(device)
        t = time.perf_counter()
        for _ in range(args.train_steps):
            step_fn()
        sync(device)
        return {"s_per_step": (time.perf_counter() - t) / args.train_steps,
                "peak_gib": peak(device)}

    unet.train()
    unet.enable_gradient_checkpointing()
    plain = measure(plain_step)
    est = estimate_training(SDTrainConfig(resolution=size if size >= 32 else 512), args.budget)
    cl = device == "cuda"
    if cl:
        unet.to(memory_format=torch.channels_last)
    studio_gc = measure(lambda: studio_step(cl))
    if not est.gradient_checkpointing:
        unet.disable_gradient_checkpointing()
    studio = measure(lambda: studio_step(cl))
    return {"size": size, "rank": 8, "batch": 1, "plain_gradient_checkpointing": plain,
            "studio": studio, "studio_gradient_checkpointing": est.gradient_checkpointing,
            "studio_with_checkpointing_forced": studio_gc,
            "studio_estimate_gib": est.total / GiB,
            "speedup": plain["s_per_step"] / studio["s_per_step"],
            "speedup_same_checkpointing": plain["s_per_step"] / studio_gc["s_per_step"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="tiny configs on CPU (smoke test)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sd.json"))
    ap.add_argument("--budget-gib", type=float, default=12.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--train-warmup", type=int, default=3)
    ap.add_argument("--only", default="sd15,sdxl,train")
    args = ap.parse_args(argv)
    args.budget = int(args.budget_gib * GiB)

    import tempfile

    import diffusers
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    if device == "cuda":
        from studio.devices import emulate_card

        emulate_card(args.budget)
    result = {"bench": "sd", "device": torch.cuda.get_device_name(0) if device == "cuda"
              else platform.processor() or "cpu", "budget_gib": args.budget_gib,
              "torch": torch.__version__, "diffusers": diffusers.__version__,
              "dtype": str(dtype), "tiny": args.tiny, "date": time.strftime("%Y-%m-%d")}
    parts = args.only.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in (("sd15_512", bench_sd15_generation), ("train_sd15", bench_training),
                         ("sdxl_1024", bench_sdxl_generation)):
            key = {"sd15_512": "sd15", "train_sd15": "train", "sdxl_1024": "sdxl"}[name]
            if key not in parts:
                continue
            t = time.perf_counter()
            try:
                result[name] = fn(args, device, dtype, Path(tmp))
            except Exception as e:  # one failing part still leaves the others' numbers
                import traceback

                traceback.print_exc()
                result[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
            result[name]["bench_seconds"] = time.perf_counter() - t
            reset_peak(device)
            print(name, json.dumps(result[name], default=str)[:600], flush=True)
    s = result.get("sd15_512", {})
    tr = result.get("train_sd15", {})
    xl = result.get("sdxl_1024", {})
    result["targets"] = {
        "sd15_generation_1.5x": (s.get("speedup") or 0) >= 1.5,
        "training_1.3x": (tr.get("speedup") or 0) >= 1.3,
        "sdxl_1024_within_budget": bool(xl.get("studio_within_budget")),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if set(parts) != {"sd15", "sdxl", "train"} and out.exists():
        # A partial run updates its own sections and keeps the others' numbers.
        old = json.loads(out.read_text())
        for name in ("sd15_512", "train_sd15", "sdxl_1024"):
            if name not in result and name in old:
                result[name] = old[name]
        result["partial_runs"] = old.get("partial_runs", []) + [
            {"date": result["date"], "only": parts}]
        s, tr, xl = (result.get(k, {}) for k in ("sd15_512", "train_sd15", "sdxl_1024"))
        result["targets"] = {
            "sd15_generation_1.5x": (s.get("speedup") or 0) >= 1.5,
            "training_1.3x": (tr.get("speedup") or 0) >= 1.3,
            "sdxl_1024_within_budget": bool(xl.get("studio_within_budget"))}
    out.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result["targets"]), "->", out)
    return result


if __name__ == "__main__":
    main()
