"""VLM benchmark: the Vision tab's engine against plain transformers + bitsandbytes NF4
``generate()``, and its QLoRA against the plain PEFT recipe, in one run, on random weights of
the real architectures under a 12 GiB emulated card.

- LLaVA-1.5-7B NF4, one 336 px picture, 512 new tokens (greedy, EOS ignored): peak VRAM, decode
  tokens/s, time to first token (vision encoder + projector + prefill), greedy tokens equal.
- Qwen2.5-VL-7B NF4 with a 1024 x 1024 picture: the same numbers (fits the 12 GiB cap?).
- QLoRA of LLaVA-1.5-7B, batch 1, 1 picture + 512 text tokens: peak VRAM and tokens/s, ours
  (`tabs.vlm.train`: vision tower and projector kept in bf16 and frozen, no fp32 upcast) against
  the plain recipe (everything in 4-bit, ``prepare_model_for_kbit_training``, LoRA on the same
  language-model layers).

    python bench/vlm.py                  # GPU: writes bench/results/vlm.json
    python bench/vlm.py --tiny           # a CPU smoke run on tiny models (no NF4, no graphs)
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GiB = 1024**3


# ----- the real architectures (published dims), with the bench tokenizer's picture ids ---------
def llava15_7b_config(tok, layers: int = 32):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    from tabs.vlm.tiny import special_ids

    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=32,
                       max_position_embeddings=4096, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, bos_token_id=None)
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                              num_attention_heads=16, image_size=336, patch_size=14,
                              projection_dim=768, hidden_act="quick_gelu")
    return LlavaConfig(vision_config=vision, text_config=text, vision_feature_layer=-2,
                       vision_feature_select_strategy="default", projector_hidden_act="gelu",
                       tie_word_embeddings=False, **special_ids(tok, "llava"))


def qwen25vl_7b_config(tok, layers: int = 28):
    from transformers import Qwen2_5_VLConfig

    from tabs.vlm.tiny import special_ids

    text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                num_hidden_layers=layers, num_attention_heads=28, num_key_value_heads=4,
                max_position_embeddings=128000, rms_norm_eps=1e-6, tie_word_embeddings=False,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                 "mrope_section": [16, 24, 24]})
    vision = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
              "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
              "temporal_patch_size": 2, "window_size": 112, "tokens_per_second": 2,
              "fullatt_block_indexes": [7, 15, 23, 31]}
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False,
                            **special_ids(tok, "qwen2-vl"))


def make_checkpoint(folder: Path, family: str, tiny: bool, device: str) -> dict:
    """Random bf16 weights + the bench processor saved as a normal model folder."""
    import torch

    from tabs.vlm.tiny import make_processor, make_tiny_vlm, tokenizer_for

    t0 = time.perf_counter()
    if tiny:
        make_tiny_vlm(folder, "llava" if family == "llava" else "qwen2.5-vl", seed=0)
        return {"seconds": time.perf_counter() - t0}
    from transformers import LlavaForConditionalGeneration, Qwen2_5_VLForConditionalGeneration

    tok = tokenizer_for("llava" if family == "llava" else "qwen2-vl")
    if family == "llava":
        cfg, cls = llava15_7b_config(tok), LlavaForConditionalGeneration
        proc = make_processor("llava", tok, image_size=336)
    else:
        cfg, cls = qwen25vl_7b_config(tok), Qwen2_5_VLForConditionalGeneration
        proc = make_processor("qwen2-vl", tok, min_pixels=56 * 56, max_pixels=1024 * 1024)
    torch.manual_seed(0)
    with torch.device(device):
        torch.set_default_dtype(torch.bfloat16)
        model = cls(cfg)
        torch.set_default_dtype(torch.float32)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    n = sum(p.numel() for p in model.parameters())
    del model
    free(device)
    return {"seconds": time.perf_counter() - t0, "parameters": n}


def free(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def peak(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / GiB if device == "cuda" else None


def reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def picture(size: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def ask(img) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": img},
                                         {"type": "text", "text": "Describe the picture."}]}]


# ----- decode: plain generate() vs ours ---------------------------------------------------------
def plain_bnb(vision_in_4bit: bool = True):
    import torch
    from transformers import BitsAndBytesConfig

    kw = {} if vision_in_4bit else {"llm_int8_skip_modules": ["vision_tower", "visual",
                                                             "multi_modal_projector",
                                                             "lm_head"]}
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16, **kw)


def run_plain(folder: Path, img, new_tokens: int, device: str) -> dict:
    """The plain path: from_pretrained(NF4) + processor + generate()."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tabs.vlm.engine import split_images

    t0 = time.perf_counter()
    kw = ({"quantization_config": plain_bnb(), "dtype": torch.bfloat16, "device_map": {"": 0}}
          if device == "cuda" else {"dtype": torch.float32})
    model = AutoModelForImageTextToText.from_pretrained(folder, **kw).eval()
    proc = AutoProcessor.from_pretrained(folder)
    load_s = time.perf_counter() - t0
    shaped, images, _ = split_images(ask(img))
    text = proc.apply_chat_template(shaped, add_generation_prompt=True, tokenize=False)
    inputs = {k: v.to(model.device) for k, v in proc(text=[text], images=images,
                                                     return_tensors="pt").items()}
    gen = dict(do_sample=False, eos_token_id=None, pad_token_id=proc.tokenizer.pad_token_id)
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, **gen)  # warm-up
        reset_peak(device)
        sync(device)
        t = time.perf_counter()
        model.generate(**inputs, max_new_tokens=1, min_new_tokens=1, **gen)
        sync(device)
        ttft = time.perf_counter() - t
        t = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **gen)
        sync(device)
        total = time.perf_counter() - t
    tokens = out[0, inputs["input_ids"].shape[1]:].tolist()
    res = {"route": "transformers generate(), bitsandbytes NF4 (double quant) for every linear "
                    "layer, DynamicCache" if device == "cuda" else "transformers generate()",
           "load_s": load_s, "prompt_tokens": int(inputs["input_ids"].shape[1]),
           "ttft_s": ttft, "total_s": total, "new_tokens": len(tokens),
           "decode_tokens_per_s": (len(tokens) - 1) / max(total - ttft, 1e-9),
           "peak_vram_gib": peak(device), "_tokens": tokens}
    del model, out, inputs
    free(device)
    return res


def run_ours(studio, folder: Path, img, new_tokens: int, device: str, max_pixels=None,
             quant: str = "nf4") -> dict:
    """The Vision tab's engine: load through the model manager, vision encoder + projector once
    at prefill, then the static-cache / CUDA-graph decode loop (EOS ignored, as for plain)."""
    from studio.llm.base import GenerationSettings
    from studio.llm.engine import Sampler
    from tabs.vlm.engine import VLMEngine, VLMSource, embed_prompt, process

    engine = VLMEngine(studio, VLMSource(str(folder), quant if device == "cuda" else "fp32",
                                         max_pixels=max_pixels))
    t0 = time.perf_counter()
    res: dict = {}
    with studio.models.use(engine.key) as llm:
        res["load_s"] = time.perf_counter() - t0
        res["measured_gib"] = studio.models.stats(engine.key)["size"] / GiB
        dec = llm.decoder
        res["decode_path"] = "CUDA graphs" if dec.use_cuda_graphs else "static cache (eager)"
        inputs, _ = process(llm, ask(img))
        ids = inputs["input_ids"][0].tolist()
        res["prompt_tokens"] = len(ids)

        def one(n: int) -> dict:
            sampler = Sampler(GenerationSettings(temperature=0, max_new_tokens=n), dec.device,
                              len(ids))
            sync(device)
            t = time.perf_counter()
            pre = embed_prompt(llm.model, inputs)
            first, toks = None, []
            for tok in dec.generate(ids, n, sampler, inputs=pre):
                if first is None:
                    first = time.perf_counter()
                toks.append(tok)
            sync(device)
            end = time.perf_counter()
            return {"ttft_s": first - t, "total_s": end - t, "new_tokens": len(toks),
                    "decode_tokens_per_s": (len(toks) - 1) / max(end - first, 1e-9),
                    "_tokens": toks}

        one(8)  # warm-up: captures the decode graphs
        reset_peak(device)
        res.update(one(new_tokens))
        res["peak_vram_gib"] = peak(device)
        res["kv_cache_gib"] = dec.cache_bytes() / GiB
    # the same turn as the tab runs it (stream_chat; may end early at a sampled end token)
    reset_peak(device)
    done = [e for e in engine.stream_chat(ask(img), GenerationSettings(
        temperature=0, max_new_tokens=new_tokens)) if e.kind == "done"][0]
    res["stream_chat"] = {"ttft_s": done.stats.ttft_s, "new_tokens": done.stats.new_tokens,
                          "decode_tokens_per_s": done.stats.decode_tokens_per_s,
                          "peak_vram_gib": peak(device)}
    fmt = {"nf4": "NF4 language model, vision tower + projector bf16",
           "int4": "int4 (tinygemm, studio.llm.int4) language model, vision tower + projector"
                   " int4 where tinygemm takes the shape"}.get(quant, quant)
    res["route"] = (f"VLMEngine: {fmt}, run once at prefill; static KV cache, own decode loop, "
                    + res["decode_path"])
    studio.models.evict_all()
    free(device)
    return res


def equal_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# ----- QLoRA: plain PEFT recipe vs ours ---------------------------------------------------------
def qlora_batch(proc, img, text_tokens: int, device: str):
    """One picture + `text_tokens` answer tokens, labels on the answer only."""
    import torch

    from tabs.vlm.engine import split_images

    shaped, images, _ = split_images(ask(img))
    prompt = proc.apply_chat_template(shaped, add_generation_prompt=True, tokenize=False)
    inputs = dict(proc(text=[prompt], images=images, return_tensors="pt"))
    head = inputs["input_ids"].shape[1]
    vocab = len(proc.tokenizer)
    answer = torch.randint(10, vocab - 10, (1, text_tokens),
                           generator=torch.Generator().manual_seed(0))
    inputs["input_ids"] = torch.cat([inputs["input_ids"], answer], 1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat(
            [inputs["mm_token_type_ids"], torch.zeros_like(answer)], 1)
    labels = inputs["input_ids"].clone()
    labels[:, :head] = -100
    inputs["labels"] = labels
    return {k: v.to(device) for k, v in inputs.items()}, int(inputs["input_ids"].shape[1])


def qlora_steps(model, batch, tokens: int, device: str, steps: int) -> dict:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device == "cuda")
    model.train()
    losses = []
    for i in range(steps + 1):
        if i == 1:  # the first step warms up (allocator, kernels)
            sync(device)
            reset_peak(device)
            t = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    sync(device)
    dt = time.perf_counter() - t
    return {"tokens_per_s": tokens * steps / dt, "step_s": dt / steps,
            "peak_vram_gib": peak(device), "losses": losses,
            "trainable_parameters": sum(p.numel() for p in params)}


def run_qlora_plain(folder: Path, img, text_tokens: int, device: str, steps: int) -> dict:
    return measured_qlora(lambda: plain_peft_model(folder, device), img, text_tokens, device,
                          steps, route="plain PEFT recipe: every linear layer in NF4 (vision "
                          "too), prepare_model_for_kbit_training (fp32 upcast of the rest, "
                          "checkpointing), LoRA r16 on the language model's linear layers")


def run_qlora_ours(folder: Path, img, text_tokens: int, device: str, steps: int) -> dict:
    return measured_qlora(lambda: our_model(folder, device), img, text_tokens, device, steps,
                          route="tabs.vlm.train: NF4 language model, vision tower + projector "
                          "bf16 and frozen, no fp32 upcast, reentrant checkpointing, LoRA r16 "
                          "on the language model's linear layers")


def plain_peft_model(folder: Path, device: str):
    """(model, processor) as the plain PEFT recipe prepares them."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tabs.vlm.train import language_targets

    kw = ({"quantization_config": plain_bnb(), "dtype": torch.bfloat16, "device_map": {"": 0}}
          if device == "cuda" else {})
    model = AutoModelForImageTextToText.from_pretrained(folder, **kw)
    proc = AutoProcessor.from_pretrained(folder)
    if device == "cuda":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                             target_modules=language_targets(model, None),
                                             task_type="CAUSAL_LM"))
    return model, proc


def our_model(folder: Path, device: str):
    """(model, processor) as tabs.vlm.train prepares them."""
    import torch

    from tabs.vlm.config import VLMAdaptConfig
    from tabs.vlm.train import add_lora, load_base

    cfg = VLMAdaptConfig(base_model=str(folder), train_file="x.zip", lora_r=16, lora_alpha=32,
                         quantization="nf4" if device == "cuda" else "none")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    proc, model = load_base(cfg, device, dtype, device == "cuda")
    return add_lora(model, cfg), proc


def measured_qlora(build, img, text_tokens: int, device: str, steps: int, route: str) -> dict:
    """Training steps of the (model, processor) `build()` makes, measured alike for both
    recipes; the model is freed before the next one is built."""
    model, proc = build()
    batch, tokens = qlora_batch(proc, img, text_tokens, device)
    res = qlora_steps(model, batch, tokens, device, steps)
    res.update(route=route, sequence_tokens=tokens)
    del model, batch
    free(device)
    return res


# ----- main ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    import shutil

    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "vlm.json"))
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--qwen-plain-tokens", type=int, default=128,
                   help="new tokens for Qwen's plain generate() (its tokens/s is per token)")
    p.add_argument("--cap-gib", type=float, default=12.0)
    p.add_argument("--qlora-steps", type=int, default=4)
    p.add_argument("--only", default="llava,qwen,qlora")
    p.add_argument("--tiny", action="store_true", help="CPU smoke run on tiny models")
    p.add_argument("--quant", default="nf4",
                   help="the engine's formats to measure, e.g. nf4,int4 (nf4 is 'ours')")
    a = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not a.tiny else "cpu"
    if device == "cpu" and not a.tiny:
        raise SystemExit("bench/vlm.py needs a CUDA GPU (or --tiny for a CPU smoke run)")
    if a.tiny:
        a.new_tokens = min(a.new_tokens, 16)
    only = set(a.only.split(","))

    import transformers

    from studio.config import Settings
    from studio.context import build_studio
    from studio.devices import emulate_card

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__}
    if device == "cuda":
        import bitsandbytes
        import peft

        versions.update(bitsandbytes=bitsandbytes.__version__, peft=peft.__version__)
    res: dict = {"benchmark": "VLM decode (batch 1, greedy, EOS ignored) and QLoRA step",
                 "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                 "emulated_card_gib": a.cap_gib, "new_tokens": a.new_tokens,
                 "weights": "random, real architectures" if not a.tiny else "tiny random",
                 "versions": versions, "models": {}, "errors": {}}
    out = Path(a.out if not a.tiny else Path(tempfile.gettempdir()) / "vlm-tiny.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        def clean(o):
            if isinstance(o, dict):
                return {k: clean(v) for k, v in o.items() if not k.startswith("_")}
            return o
        out.write_text(json.dumps(clean(res), indent=2, default=str))

    shm = Path("/dev/shm")
    roomy = shm.is_dir() and shutil.disk_usage(shm).free > 40 * GiB  # RAM disk: fast saves
    tmp = Path(tempfile.mkdtemp(prefix="vlm-bench-", dir=shm if roomy else None))
    if device == "cuda":
        emulate_card(int(a.cap_gib * GiB))
    studio = build_studio(Settings(home=tmp / "home", vram_budget=int(a.cap_gib * GiB)),
                          start_jobs=False)
    plan = [("llava", "LLaVA-1.5-7B", 336, None), ("qwen", "Qwen2.5-VL-7B", 1024, 1024 * 1024)]
    try:
        for fam, title, size, cap in plan:
            wanted = fam in only or (fam == "llava" and "qlora" in only)
            if not wanted:
                continue
            entry = res["models"].setdefault(title, {"picture": f"{size} x {size}"})
            try:
                if device == "cuda":  # the bf16 checkpoint is bigger than the emulated card
                    torch.cuda.set_per_process_memory_fraction(1.0)
                entry["checkpoint"] = make_checkpoint(tmp / fam, fam, a.tiny, device)
                if device == "cuda":
                    emulate_card(int(a.cap_gib * GiB))
            except Exception:
                res["errors"][f"{title} checkpoint"] = traceback.format_exc(limit=5)
                save()
                continue
            if fam not in only:
                continue
            img = picture(size)
            try:
                n = a.new_tokens if fam == "llava" else min(a.new_tokens, a.qwen_plain_tokens)
                entry["plain_generate"] = run_plain(tmp / fam, img, n, device)
            except Exception:
                res["errors"][f"{title} plain"] = traceback.format_exc(limit=5)
            free(device)
            save()
            for quant in a.quant.split(","):
                name = "ours" if quant == "nf4" else f"ours_{quant}"
                try:
                    ours = run_ours(studio, tmp / fam, img, a.new_tokens, device, cap, quant)
                    base = entry.get("plain_generate")
                    if base:
                        ours["speedup_vs_plain"] = (ours["decode_tokens_per_s"]
                                                    / base["decode_tokens_per_s"])
                        ours["greedy_tokens_equal_to_plain"] = equal_prefix(ours["_tokens"],
                                                                            base["_tokens"])
                    entry[name] = ours
                except Exception:
                    res["errors"][f"{title} {name}"] = traceback.format_exc(limit=5)
                free(device)
                save()
            if fam != "llava":
                shutil.rmtree(tmp / fam, ignore_errors=True)
        if "qlora" in only and (tmp / "llava").is_dir():  # last: the decode numbers come first
            q = res["models"]["LLaVA-1.5-7B"].setdefault("qlora_1_picture_512_text_tokens", {})
            for name, fn in (("ours", run_qlora_ours), ("plain_peft", run_qlora_plain)):
                try:
                    q[name] = fn(tmp / "llava", picture(336), 512 if not a.tiny else 32, device,
                                 a.qlora_steps)
                except Exception:
                    res["errors"][f"LLaVA-1.5-7B qlora {name}"] = traceback.format_exc(limit=5)
                free(device)
                save()
            if "ours" in q and "plain_peft" in q:
                q["tokens_per_s_ratio"] = (q["ours"]["tokens_per_s"]
                                           / q["plain_peft"]["tokens_per_s"])
        save()
    finally:
        studio.close()
        shutil.rmtree(tmp, ignore_errors=True)
    save()
    print(json.dumps(json.loads(out.read_text()), indent=1))
    return res


if __name__ == "__main__":
    main()
