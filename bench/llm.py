"""Local LLM decode benchmark, one run, random weights of the Llama-3.1-8B architecture: plain
transformers + bitsandbytes NF4 ``generate()``, the engine as it was (NF4, module-by-module step),
and the engine's int4 route as it ships ("int4_shipped": the `studio.llm.int4` defaults the app
loads: tinygemm g64, int8 head, fused glue, fused Triton decode attention), plus variants.

Measured (batch 1, prompt 512, 256 new tokens, greedy, EOS ignored) under a 12 GiB emulated
card (``emulate_card``): decode tokens/s, TTFT, peak VRAM, the same at 8k context, the fraction
of the HBM bandwidth limit (bytes one step must read), the per-token time split (projections,
attention, head, other), mean KL of the logits against the bf16 weights for each format, where
the peak comes from (peak_breakdown), and kernel tables: bf16, bnb NF4, tinygemm g128/g64 (and
its inner k-tiles), GemLite A16W4 per 8B projection shape; the LM head in bf16/int4/int8
(head_kernels); decode attention per attended length, Triton splits vs GEMMs
(decode_attention_kernels: what "auto" picks).

    python bench/llm.py                      # writes bench/results/llm.json
    python bench/llm.py --layers 4 --quick   # a smoke run on a smaller stack
    python bench/llm.py --real-quality PATH/SmolLM2-135M-Instruct.Q4_1.gguf   # CPU: KL of NF4
        # and int4 on a real checkpoint, merged into the same file (quality_real_checkpoint)
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


def _shipped():
    from studio.llm import int4

    return int4.GROUP, int4.QUANTIZE_HEAD, int4.FUSE


SHIPPED = _shipped()  # read before any variant below changes the module's globals


def llama31_8b_config(layers: int = 32):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=128000,
        eos_token_id=[128001, 128008, 128009],
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
    )


def sync() -> None:
    import torch

    torch.cuda.synchronize()


def make_checkpoint(folder: Path, layers: int, ref_ids) -> dict:
    """Random bf16 weights saved as a normal model folder; bf16 reference logits on `ref_ids`."""
    import torch
    from transformers import LlamaForCausalLM

    from studio.llm.testing import build_tokenizer

    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        model = LlamaForCausalLM(llama31_8b_config(layers))
        torch.set_default_dtype(torch.float32)
    model.eval()
    with torch.inference_mode():
        ref = model(ref_ids.cuda()).logits[0].float().cpu()
    model.save_pretrained(folder)
    build_tokenizer("llama3.1").save_pretrained(folder)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return {"seconds": time.perf_counter() - t0, "ref_logits": ref}


def bnb_config():
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def run_baseline(folder: Path, prompt, new_tokens: int, ref_ids) -> dict:
    """The plain path: from_pretrained(NF4) + generate()."""
    import torch
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=bnb_config(),
                                                 dtype=torch.bfloat16, device_map={"": 0})
    load_s = time.perf_counter() - t0
    ids = prompt.cuda()
    gen = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **gen)  # warm-up
        torch.cuda.reset_peak_memory_stats()
        sync()
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **gen)
        sync()
        ttft = time.perf_counter() - t
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **gen)
        sync()
        total = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated()
        logits = model(ref_ids.cuda()).logits[0].float().cpu()
        step_logits = plain_step_logits(model, ref_ids)
    tokens = out[0, ids.shape[1]:].tolist()
    del model, out
    gc.collect()
    torch.cuda.empty_cache()
    return {
        "route": "transformers generate(), bitsandbytes NF4 (double quant), DynamicCache",
        "load_s": load_s, "ttft_s": ttft, "total_s": total, "new_tokens": len(tokens),
        "decode_tokens_per_s": (len(tokens) - 1) / max(total - ttft, 1e-9),
        "peak_vram_gib": peak / GiB, "_tokens": tokens, "_logits": logits,
        "_step_logits": step_logits,
    }


def plain_step_logits(model, ref_ids):
    """The plain model's own decode path (DynamicCache, one token per forward), rows as in
    `decoder_logits`: the same batch-1 kernels the engine uses, so only the glue differs."""
    import torch

    ids = ref_ids.cuda()
    half = ids.shape[1] // 2
    out = model(ids[:, :half], use_cache=True)
    rows = [out.logits[0, -1].float().cpu()]
    past = out.past_key_values
    for i in range(half, ids.shape[1] - 1):
        out = model(ids[:, i:i + 1], past_key_values=past, use_cache=True)
        past = out.past_key_values
        rows.append(out.logits[0, -1].float().cpu())
    return torch.stack(rows)


def time_decoder(decoder, prompt_ids: list[int], new_tokens: int) -> dict:
    """One greedy run through the engine's decode loop (the code `stream_chat` uses)."""
    from studio.llm.base import GenerationSettings
    from studio.llm.engine import Sampler

    decoder.forget_prefix()
    sampler = Sampler(GenerationSettings(temperature=0, max_new_tokens=new_tokens),
                      decoder.device, len(prompt_ids))
    sync()
    t0 = time.perf_counter()
    t_first = None
    tokens = []
    for tok in decoder.generate(prompt_ids, new_tokens, sampler):
        if t_first is None:
            t_first = time.perf_counter()
        tokens.append(tok)
    sync()
    t_end = time.perf_counter()
    return {"ttft_s": t_first - t0, "total_s": t_end - t0, "new_tokens": len(tokens),
            "decode_tokens_per_s": (len(tokens) - 1) / max(t_end - t_first, 1e-9),
            "_tokens": tokens}


def decoder_logits(decoder, ref_ids) -> object:
    """Logits for every position of `ref_ids` after the first half, step by step (decode path)."""
    import torch

    ids = ref_ids[0].tolist()
    half = len(ids) // 2
    decoder.forget_prefix()
    rows = [decoder.prefill(ids[:half])[0].float().cpu()]
    for tok in ids[half:-1]:
        rows.append(decoder.step(tok)[0].float().cpu())
    return torch.stack(rows), half - 1


def compare(a, b) -> dict:
    """How close two logit matrices are (same rows)."""
    import torch

    la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    kl = (la.exp() * (la - lb)).sum(-1)
    diff = (a - b).abs()
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
            "mean_kl": float(kl.mean()), "logit_scale": float(b.abs().mean())}


def swap_linears(model, make) -> None:
    """Replace every decoder-layer nn.Linear `m` (and the head) by `make(m)` (quality runs)."""
    import torch

    from studio.llm.fast import decoder_stack

    for layer in decoder_stack(model).layers:
        for name, mod in list(layer.named_modules()):
            if isinstance(mod, torch.nn.Linear):
                parent = layer.get_submodule(name.rsplit(".", 1)[0]) if "." in name else layer
                setattr(parent, name.rsplit(".", 1)[-1], make(mod))


def nf4_fake(mod):
    """The float weights bitsandbytes NF4 (blocksize 64, double quant) stands for."""
    import bitsandbytes.functional as bnbf
    import torch

    w = mod.weight.data
    q, st = bnbf.quantize_4bit(w.float().contiguous(), blocksize=64, quant_type="nf4",
                               compress_statistics=True)
    new = torch.nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None,
                          device=w.device, dtype=w.dtype)
    new.weight.data.copy_(bnbf.dequantize_4bit(q, st).to(w.dtype))
    if mod.bias is not None:
        new.bias.data.copy_(mod.bias.data)
    return new


def real_quality(gguf: str, positions: int = 256, chunks: int = 2) -> dict:
    """Mean KL of next-token distributions against the float weights, on a real checkpoint
    (a GGUF dequantized by transformers) and real text (this repo's README), on the CPU: NF4
    (bitsandbytes' own quantizer, dequantized) and the engine's int4 route (its real CPU
    kernel), at group 128 and 64, with a float, an int4 and an int8 head."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.llm.int4 import Int4Linear, Int8Linear, quantize_model

    folder, name = str(Path(gguf).parent), Path(gguf).name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    text = (ROOT / "README.md").read_text()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    batch = torch.tensor([ids[i * positions:(i + 1) * positions] for i in range(chunks)])

    def logits(m):
        with torch.inference_mode():
            return torch.cat([m(batch[i:i + 1]).logits[0] for i in range(len(batch))]).float()

    ref = logits(model)
    out = {"checkpoint": name, "text": "README.md", "positions": int(batch.numel()),
           "reference": "the GGUF dequantized to float32 by transformers", "routes": {}}
    nf4 = copy.deepcopy(model)
    swap_linears(nf4, nf4_fake)
    out["routes"]["nf4_bnb_double_quant"] = compare(logits(nf4), ref)
    del nf4
    for group in (128, 64):
        for head in (False, "int4", "int8"):
            m = copy.deepcopy(model)
            info = quantize_model(m, "cpu", group=group, head=head)
            if head == "int8" and not isinstance(m.lm_head, Int8Linear):
                # SmolLM2's head is tied to the embedding, which quantize_model leaves shared;
                # quantize it anyway here to measure what an int8 head costs on real weights
                m.lm_head = Int8Linear.from_weight(m.lm_head.weight, None, "cpu")
            assert any(isinstance(x, Int4Linear) for x in m.modules())
            r = compare(logits(m), ref)
            r["groups_used"] = sorted({x.group_size for x in m.modules()
                                       if isinstance(x, Int4Linear)})
            r["layers"] = info["layers"]
            out["routes"][f"int4_g{group}" + (f"_{head}_head" if head else "")] = r
            del m
    out["note"] = ("The GGUF is Q4_1 (affine 4-bit, blocks of 32): its dequantized weights sit "
                   "on an affine grid, which favours an affine int4 re-quantization over NF4; "
                   "the random-weight 8B rows (Gaussian init, NF4's best case) are the other "
                   "side.")
    return out


HBM_TB_S = {"H200": 4.8, "H100 80GB HBM3": 3.35, "H100 PCIe": 2.0, "A100-SXM4-80GB": 2.04,
            "RTX 4070 Ti": 0.504}


def bandwidth_tb_s(device_name: str) -> float | None:
    for k, v in HBM_TB_S.items():
        if k in device_name:
            return v
    return None


def bytes_per_token(decoder, context: int) -> dict:
    """Bytes one decode step must read: every weight but the embedding table (one row), plus
    the K/V cache up to `context`."""
    model, inner = decoder.model, decoder.inner
    seen, total = set(), 0
    emb = inner.embed_tokens.weight
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen or t is emb or t.device.type != "cuda":
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
        qs = getattr(t, "quant_state", None)
        if qs is not None:
            total += qs.absmax.numel() * qs.absmax.element_size()
    if getattr(model.lm_head, "weight", None) is emb:
        total += emb.numel() * emb.element_size()
    kv = 2 * len(decoder.layers) * decoder.n_kv * decoder.head_dim * context * 2
    return {"weights": total, "kv": kv, "total": total + kv}


def step_split(decoder, attend: int, step_ms: float) -> dict:
    """Per-token time split of one decode step (ms): the projections (every layer's 7 linear
    layers), attention (RoPE, cache write and attention over `attend` tokens, as the route runs
    them: one fused Triton call on the "triton" route), the
    head (final norm + LM head), each timed as a CUDA graph of the engine's own modules, and
    "other" (norms, residuals, SiLU, glue: the rest of the measured step)."""
    import torch

    d = decoder
    layer, n = d.layers[0], len(d.layers)
    attn, mlp = layer.self_attn, layer.mlp
    hidden = d.inner.embed_tokens.weight.shape[1]
    inter = mlp.down_proj.in_features
    h = torch.randn(1, 1, hidden, dtype=d.dtype, device=d.device) * 0.1
    hi = torch.randn(1, 1, inter, dtype=d.dtype, device=d.device) * 0.1
    ho = torch.randn(1, 1, d.n_heads * d.head_dim, dtype=d.dtype, device=d.device) * 0.1
    pos = torch.tensor([attend - 1], device=d.device)
    rope, mask = d._step_inputs(pos, attend - 1, attend, 1)
    q = torch.randn(1, d.n_heads, 1, d.head_dim, dtype=d.dtype, device=d.device)
    k = torch.randn(1, d.n_kv, 1, d.head_dim, dtype=d.dtype, device=d.device)

    from studio.llm.fast import _qkv

    def projections():  # as the step calls them (q/k/v and gate/up fused where they are)
        _qkv(attn, h), attn.o_proj(ho)
        fused = getattr(mlp, "gate_up_proj", None)
        if fused is not None:
            fused(h)
        else:
            mlp.gate_proj(h), mlp.up_proj(h)
        mlp.down_proj(hi)

    qf = q.reshape(1, 1, -1)
    kf = k.reshape(1, 1, -1)
    from studio.llm.fast import _rope_qk

    rope_qk = d._glue()["rope_qk"] if d.fuse_glue else _rope_qk

    def attention():  # RoPE, cache write and attention as the step runs them
        d._step_attention(0, qf, kf, kf, rope, mask, pos, attend, rope_qk)

    def head():
        d.model.lm_head(d._norm(d.inner.norm, h))

    with torch.inference_mode():
        out = {"projections": n * graph_time_us(projections) / 1e3,
               "attention": n * graph_time_us(attention) / 1e3,
               "head": graph_time_us(head) / 1e3}
    out["other"] = step_ms - sum(out.values())
    out["step"] = step_ms
    out["attended_tokens"] = attend
    out["decode_attention"] = d._attention_kind(attend)
    return out


def engine_routes(res, studio, folder, tag, quant, group, head, routes, base, ids,
                  long_prompt, ref_ids, bf16_logits, a, bw) -> None:
    """Load the engine in `quant` (int4: `group`, int4 `head`), run its decode routes, the 8k
    row, the logits check against bf16 (and the plain NF4 path), the step split."""
    import torch

    from studio.llm import int4
    from studio.llm.engine import ModelSource, TransformersEngine

    shipped = group is None  # the module defaults, as the app loads int4
    if shipped:
        int4.GROUP, int4.QUANTIZE_HEAD, int4.FUSE = SHIPPED
        group, head, fuse_proj = SHIPPED
    else:
        group, fuse_proj = group if isinstance(group, tuple) else (group, False)
        int4.GROUP, int4.QUANTIZE_HEAD, int4.FUSE = group, head, fuse_proj
    engine = TransformersEngine(studio, ModelSource(str(folder), quant), max_context=a.context)
    info: dict = {"shipped_defaults": shipped} if quant == "int4" else {}
    res["engine"][tag] = info
    t0 = time.perf_counter()
    with studio.models.use(engine.key) as llm:
        info["load_s"] = time.perf_counter() - t0
        info["measured_gib"] = studio.models.stats(engine.key)["size"] / GiB
        info["format"] = llm.format
        dec = llm.decoder
        info["kv_cache_gib"] = dec.cache_bytes() / GiB
        info["resident_gib"] = torch.cuda.memory_allocated() / GiB
        prompt_ids = ids
        if shipped:
            try:
                info["peak_breakdown"] = peak_breakdown(dec, prompt_ids, a.new_tokens)
            except Exception:
                res["errors"][f"{tag} peak_breakdown"] = traceback.format_exc(limit=6)
            try:
                res["decode_attention_kernels"] = attention_table(dec)
            except Exception:
                res["errors"]["decode_attention_kernels"] = traceback.format_exc(limit=6)
        for name, graphs, attention, fuse in routes:
            try:
                dec.use_cuda_graphs = graphs
                dec.decode_attention = attention
                dec.fuse_glue = fuse
                dec.reset_graphs()
                time_decoder(dec, prompt_ids, 8)  # warm-up (captures the graphs)
                torch.cuda.reset_peak_memory_stats()
                r = time_decoder(dec, prompt_ids, a.new_tokens)
                r["peak_vram_gib"] = torch.cuda.max_memory_allocated() / GiB
                r["route"] = (f"engine, {llm.format}, "
                              + ("whole step captured as CUDA graphs" if graphs else "eager")
                              + f", {attention} decode attention, "
                              + ("fused compiled glue" if fuse else "module-by-module glue"))
                ctx = len(prompt_ids) + a.new_tokens // 2
                b = bytes_per_token(dec, ctx)
                r["bytes_per_token"] = b
                if bw:
                    limit = bw * 1e12 / b["total"]
                    r["bandwidth_limit_tokens_per_s"] = limit
                    r["fraction_of_bandwidth_limit"] = r["decode_tokens_per_s"] / limit
                if base is not None:
                    r["speedup_vs_plain"] = r["decode_tokens_per_s"] / base["decode_tokens_per_s"]
                if graphs:
                    r["step_split_ms"] = step_split(
                        dec, dec._bucket(ctx), 1e3 / r["decode_tokens_per_s"])
                res["routes"][name] = r
            except Exception:
                res["errors"][name] = traceback.format_exc(limit=6)
        long_routes = [(f"engine_cuda_graphs_{tag}_8k_context", routes[0][2], routes[0][3])]
        if quant == "nf4":  # today's engine at 8k
            long_routes = [(f"engine_cuda_graphs_{tag}_8k_context", "matmul", False)]
        elif shipped:
            long_routes.append((f"engine_cuda_graphs_{tag}_8k_context_matmul_attention",
                                "matmul", True))
        for name, attention, fuse in long_routes:
            eight_k(res, dec, name, attention, fuse, llm, long_prompt, a, bw)
        if quant == "int4":
            try:  # greedy tokens of the fast route (graphs) = its eager reference (no graphs)
                dec.decode_attention, dec.fuse_glue = routes[0][2], routes[0][3]
                dec.reset_graphs()
                dec.use_cuda_graphs = True
                g = time_decoder(dec, long_prompt[:512], 64)["_tokens"]
                dec.use_cuda_graphs = False
                e = time_decoder(dec, long_prompt[:512], 64)["_tokens"]
                dec.use_cuda_graphs = True
                info["greedy_graph_vs_eager_equal_tokens"] = sum(1 for _ in iter_equal(g, e))
                info["greedy_compared_tokens"] = len(g)
            except Exception:
                res["errors"][f"{tag} greedy"] = traceback.format_exc(limit=6)
        dec.decode_attention, dec.fuse_glue = routes[0][2], routes[0][3]
        dec.reset_graphs()
        try:
            ours, start = decoder_logits(dec, ref_ids)
            ref = bf16_logits[start:start + len(ours)]
            q = {"positions": len(ours), "vs_bf16": compare(ours, ref),
                 "route": routes[0][0]}
            if base is not None:
                q["vs_plain_nf4_decode"] = compare(ours, base["_step_logits"])
            info["logits_check"] = q
        except Exception:
            res["errors"][f"{tag} logits"] = traceback.format_exc(limit=6)


def peak_breakdown(dec, prompt_ids, new_tokens: int) -> dict:
    """Where the decode run's peak VRAM comes from: what is resident (weights, cache, graphs),
    the peak of the prefill alone, the peak of the whole run, and the largest blocks alive at
    the run's peak that the run itself allocated (from the allocator's history, with the code
    line that allocated them)."""
    import torch

    time_decoder(dec, prompt_ids, 8)  # graphs captured, as in the timed runs
    torch.cuda.synchronize()
    out = {"resident_gib": torch.cuda.memory_allocated() / GiB}
    dec.forget_prefix()
    torch.cuda.reset_peak_memory_stats()
    dec.prefill(prompt_ids)
    torch.cuda.synchronize()
    out["prefill_peak_gib"] = torch.cuda.max_memory_allocated() / GiB
    torch.cuda.reset_peak_memory_stats()
    rec = getattr(torch.cuda.memory, "_record_memory_history", None)
    if rec is not None:
        rec(max_entries=200000, stacks="python")
    time_decoder(dec, prompt_ids, new_tokens)
    torch.cuda.synchronize()
    out["run_peak_gib"] = torch.cuda.max_memory_allocated() / GiB
    if rec is None:
        return out
    snap = torch.cuda.memory._snapshot()
    rec(enabled=None)
    events = [e for t in snap.get("device_traces", []) for e in t]
    live: dict = {}
    cur = best = 0
    best_live: dict = {}
    for e in events:
        if e["action"] == "alloc":
            live[e["addr"]] = e
            cur += e["size"]
            if cur > best:
                best, best_live = cur, dict(live)
        elif e["action"] in ("free_requested", "free_completed") and e["addr"] in live:
            if e["action"] == "free_requested":
                cur -= live.pop(e["addr"])["size"]

    def where(e):
        frames = [f for f in e.get("frames", []) if "site-packages/torch" not in f["filename"]]
        return [f"{Path(f['filename']).name}:{f['line']} {f['name']}" for f in frames[:3]]

    top = sorted(best_live.values(), key=lambda e: -e["size"])[:8]
    out["run_allocations_live_at_peak_gib"] = best / GiB
    out["largest_live_at_peak"] = [{"mib": e["size"] / 2**20, "where": where(e)} for e in top]
    return out


def attention_table(dec, lengths=(256, 768, 2048, 4096, 8192)) -> dict:
    """Decode attention per token for all layers (ms; RoPE, cache write and attention, as the
    step runs them) at each attended length: the Triton route (`plan`'s split, and other
    split sizes), the two-GEMM route; which one "auto" picks."""
    import torch

    from studio.llm import attention as att
    from studio.llm.fast import _rope_qk

    d, n = dec, len(dec.layers)
    kw = dict(dtype=d.dtype, device=d.device)
    q = torch.randn(1, 1, d.n_heads * d.head_dim, **kw)
    k = torch.randn(1, 1, d.n_kv * d.head_dim, **kw)
    rope_qk = d._glue()["rope_qk"] if d.compile_glue else _rope_qk
    kind0 = d.decode_attention
    out: dict = {"ms_per_token_all_layers": {}, "layers": n}
    try:
        for attend in lengths:
            if attend > d.max_len:
                continue
            pos = torch.tensor([attend - 1], device=d.device)
            row = {}
            for kind in ("triton", "matmul"):
                d.decode_attention = kind
                rope, mask = d._step_inputs(pos, attend - 1, attend, 1)

                def fn(rope=rope, mask=mask, pos=pos, attend=attend):
                    for i in range(n):  # every layer's own cache: no L2 reuse between layers
                        d._step_attention(i, q, k, k, rope, mask, pos, attend, rope_qk)

                row[kind] = graph_time_us(fn, calls=2, replays=10) / 1e3
            rope, _ = d._step_inputs(pos, attend - 1, attend, 1)
            row["triton_split"] = att.plan(attend, d.n_kv)
            for split in (32, 64, 128, 256, 512):
                if split > attend:
                    continue

                def fs(rope=rope, pos=pos, attend=attend, split=split):
                    for i in range(n):
                        att.fused_decode_attention(q, k, k, rope[0], rope[1], d.k_cache[i],
                                                   d.v_cache[i], pos, attend, split=split)

                row[f"triton_split_{split}"] = graph_time_us(fs, calls=2, replays=10) / 1e3
            d.decode_attention = "auto"
            row["auto_picks"] = d._attention_kind(attend)
            out["ms_per_token_all_layers"][attend] = row
    finally:
        d.decode_attention = kind0
        d.reset_graphs()
    return out


def eight_k(res, dec, name, attention, fuse, llm, long_prompt, a, bw) -> None:
    """8k context: peak VRAM, TTFT of a long prompt, decode over a full cache."""
    import torch

    try:
        dec.use_cuda_graphs, dec.decode_attention, dec.fuse_glue = True, attention, fuse
        dec.reset_graphs()
        time_decoder(dec, long_prompt, 4)
        torch.cuda.reset_peak_memory_stats()
        r = time_decoder(dec, long_prompt, a.new_tokens)
        r["peak_vram_gib"] = torch.cuda.max_memory_allocated() / GiB
        r["prompt_tokens"] = len(long_prompt)
        r["route"] = (f"engine, {llm.format}, CUDA graphs, {attention} decode attention, "
                      + ("fused" if fuse else "module-by-module") + " glue; the prompt "
                      "fills the context to its last token")
        ctx = len(long_prompt) + a.new_tokens // 2
        if bw:
            r["fraction_of_bandwidth_limit"] = r["decode_tokens_per_s"] / (
                bw * 1e12 / bytes_per_token(dec, ctx)["total"])
        r["step_split_ms"] = step_split(dec, dec._bucket(ctx), 1e3 / r["decode_tokens_per_s"])
        res["routes"][name] = r
    except Exception:
        res["errors"][name] = traceback.format_exc(limit=6)


def clean_memory() -> dict:
    """Free what earlier runs of this process left allocated that is not theirs to keep
    (garbage, cached blocks, cuBLAS's per-stream workspaces), so each engine's peak is its
    own; returns what was allocated before and after (GiB)."""
    import torch

    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated() / GiB
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
    torch.cuda.empty_cache()
    return {"allocated_gib": before, "after_clearing_cublas_workspaces_gib":
            torch.cuda.memory_allocated() / GiB}


def iter_equal(a, b):
    for x, y in zip(a, b, strict=False):
        if x != y:
            return
        yield x


def summary(res) -> dict:
    """The issue's targets against this run."""
    r, e = res["routes"], res.get("engine", {})
    out = {}
    plain = r.get("plain_generate_nf4", {}).get("decode_tokens_per_s")
    nf4 = r.get("engine_cuda_graphs_nf4", {}).get("decode_tokens_per_s")
    nf4_kl = e.get("nf4", {}).get("logits_check", {}).get("vs_bf16", {}).get("mean_kl")
    for tag in [t for t in e if t.startswith("int4")]:
        row = r.get(f"engine_cuda_graphs_{tag}", {})
        long = r.get(f"engine_cuda_graphs_{tag}_8k_context", {})
        kl = e[tag].get("logits_check", {}).get("vs_bf16", {}).get("mean_kl")
        tps = row.get("decode_tokens_per_s")
        out[tag] = {
            "format": e[tag].get("format"), "shipped_defaults": e[tag].get("shipped_defaults"),
            "decode_tokens_per_s": tps, "vs_plain_generate": tps / plain if tps and plain
            else None, "vs_nf4_engine": tps / nf4 if tps and nf4 else None,
            "plain_generate_tokens_per_s": plain, "nf4_engine_tokens_per_s": nf4,
            "peak_vram_gib": row.get("peak_vram_gib"),
            "fraction_of_bandwidth_limit": row.get("fraction_of_bandwidth_limit"),
            "step_split_ms": row.get("step_split_ms"),
            "tokens_per_s_8k": long.get("decode_tokens_per_s"),
            "peak_vram_gib_8k": long.get("peak_vram_gib"),
            "fraction_of_bandwidth_limit_8k": long.get("fraction_of_bandwidth_limit"),
            "step_split_ms_8k": long.get("step_split_ms"),
            "mean_kl_vs_bf16": kl, "nf4_mean_kl_vs_bf16": nf4_kl,
            "target_300_tok_s": bool(tps and tps >= 300),
            "target_peak_6_6_gib": bool(row.get("peak_vram_gib") and
                                        row["peak_vram_gib"] <= 6.6),
            "target_8k_250_tok_s": bool(long.get("decode_tokens_per_s", 0) >= 250),
            "target_kl_no_worse_than_nf4": bool(kl is not None and nf4_kl is not None
                                                and kl <= nf4_kl),
        }
    return out


LINEAR_SHAPES = {"q_proj/o_proj": (4096, 4096), "k_proj/v_proj": (1024, 4096),
                 "gate_proj/up_proj": (14336, 4096), "down_proj": (4096, 14336)}
PER_LAYER = {"q_proj/o_proj": 2, "k_proj/v_proj": 2, "gate_proj/up_proj": 2, "down_proj": 1}
FUSED_SHAPES = {"qkv_fused": (6144, 4096), "gate_up_fused": (28672, 4096),
                "lm_head": (128256, 4096)}


_SIDE = None


def graph_time_us(fn, calls: int = 20, replays: int = 20) -> float:
    """Microseconds per call of `fn`, captured back to back in a CUDA graph (no launch gaps)."""
    import torch

    global _SIDE
    if _SIDE is None:  # one side stream: cuBLAS keeps a workspace for every stream it ran on
        _SIDE = torch.cuda.Stream()
    side = _SIDE
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    g.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        g.replay()
    end.record()
    sync()
    return start.elapsed_time(end) * 1000 / (calls * replays)


def time_shape(n: int, k: int, gemlite: bool) -> tuple[dict, dict]:
    """Per-call microseconds of one (out n, in k) projection at batch 1, per kernel: bf16,
    bitsandbytes NF4, the engine's int4 layer (tinygemm) at group 128 and 64, GemLite's A16W4
    Triton kernel (group 128) when it is installed."""
    import torch

    from studio.llm.int4 import Int4Linear

    x = torch.randn(1, k, dtype=torch.bfloat16, device="cuda")
    w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02
    row, errors = {"bf16": graph_time_us(lambda: torch.nn.functional.linear(x, w))}, {}
    try:
        import bitsandbytes as bnb

        lin = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.bfloat16,
                                quant_type="nf4", compress_statistics=True)
        lin.weight = bnb.nn.Params4bit(w.cpu(), requires_grad=False, quant_type="nf4",
                                       compress_statistics=True)
        lin = lin.cuda()
        with torch.inference_mode():
            row["bnb_nf4"] = graph_time_us(lambda: lin(x))
    except Exception as exc:
        errors["bnb_nf4"] = repr(exc)
    for group in (128, 64):
        try:
            q4 = Int4Linear.from_weight(w, None, "cuda", group)
            with torch.inference_mode():
                row[f"int4_tinygemm_g{group}"] = graph_time_us(lambda q4=q4: q4(x))
        except Exception as exc:
            errors[f"int4_tinygemm_g{group}"] = repr(exc)
    for tiles in (2, 4, 8):  # the layout's inner k-tiles (the engine packs with
        # int4.CUDA_INNER_K_TILES; the plain g64 row above is that default)
        try:
            q4 = Int4Linear.from_weight(w, None, "cuda", 64, tiles=tiles)
            with torch.inference_mode():
                row[f"int4_tinygemm_g64_tiles{tiles}"] = graph_time_us(lambda q4=q4: q4(x))
        except Exception as exc:
            errors[f"int4_tinygemm_g64_tiles{tiles}"] = repr(exc)
    if gemlite:
        try:
            from gemlite.helper import A16Wn

            from studio.llm.int4 import quantize

            q, sc, z = quantize(w, 128, clip_search=False, refine=0)
            zq = (8 - z / sc)  # gemlite's form: w = (q - zero) * scale
            gl = A16Wn(device="cuda", dtype=torch.bfloat16).from_weights(
                q, sc.to(torch.bfloat16), zq.to(torch.bfloat16), 4, 128)
            t0 = time.perf_counter()
            gl(x)  # autotune / compile
            sync()
            errors["gemlite_first_call_s"] = time.perf_counter() - t0
            row["gemlite_a16w4_g128"] = graph_time_us(lambda: gl(x))
        except Exception as exc:
            errors["gemlite_a16w4_g128"] = repr(exc)[:400]
    return row, errors


def head_kernels(n: int = 128256, k: int = 4096) -> dict:
    """The 8B LM head at batch 1 (us per call) in each format the engine can give it: bf16,
    int4 g64 (tinygemm), int8 through PyTorch's ``_weight_int8pack_mm`` and through the
    engine's Triton kernel (`int8_gemv`) at several block shapes; bytes read and TB/s."""
    import torch

    from studio.llm import int4

    x = torch.randn(1, k, dtype=torch.bfloat16, device="cuda")
    w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02
    us, nbytes, errors = {}, {}, {}
    with torch.inference_mode():
        us["bf16"] = graph_time_us(lambda: torch.nn.functional.linear(x, w))
        nbytes["bf16"] = w.numel() * 2
        q4 = int4.Int4Linear.from_weight(w, None, "cuda", 64)
        us["int4_g64_tinygemm"] = graph_time_us(lambda: q4(x))
        nbytes["int4_g64_tinygemm"] = q4.weight_bytes
        h8 = int4.Int8Linear.from_weight(w, None, "cuda")
        ref = torch.nn.functional.linear(x.float(), h8.dequantized())
        us["int8_aten_weight_int8pack_mm"] = graph_time_us(
            lambda: torch.ops.aten._weight_int8pack_mm(x, h8.weight_int8, h8.scale))
        nbytes["int8_aten_weight_int8pack_mm"] = h8.weight_bytes
        for bn in (8, 16, 32):
            for bk in (256, 512, 1024):
                for nw in (4, 8):
                    name = f"int8_triton_n{bn}_k{bk}_w{nw}"
                    try:
                        def fn(bn=bn, bk=bk, nw=nw):
                            return int4.int8_gemv(x, h8.weight_int8, h8.scale, None, bn, bk, nw)
                        err = (fn().float() - ref).abs().max() / ref.abs().max()
                        if err > 1e-2:
                            raise AssertionError(f"relative error {float(err)}")
                        us[name] = graph_time_us(fn)
                        nbytes[name] = h8.weight_bytes
                    except Exception as exc:
                        errors[name] = repr(exc)[:300]
        us["int8_engine_layer"] = graph_time_us(lambda: h8(x))
        nbytes["int8_engine_layer"] = h8.weight_bytes
    tbs = {name: nbytes[name] / (t * 1e-6) / 1e12 for name, t in us.items()}
    best = min((t, name) for name, t in us.items() if name.startswith("int8_triton"))
    return {"shape": [n, k], "us_per_call": us, "tb_s": tbs, "errors": errors,
            "best_int8_triton": best[1],
            "engine_int8_config": {"block_n": int4.GEMV_BLOCK_N, "block_k": int4.GEMV_BLOCK_K,
                                   "num_warps": int4.GEMV_WARPS}}


def linear_kernels(layers: int, gemlite: bool = True) -> dict:
    """Batch-1 matmul kernels per 8B projection shape (and the fused q/k/v, gate/up and the LM
    head shapes): the measurement that picks the engine's kernel."""
    try:
        import gemlite as _gl  # noqa: F401
    except ImportError:
        gemlite = False
    out: dict = {"us_per_call": {}, "errors": {}}
    for name, (n, k) in {**LINEAR_SHAPES, **FUSED_SHAPES}.items():
        row, errors = time_shape(n, k, gemlite)
        out["us_per_call"][name] = row
        out["errors"].update({f"{name} {kind}": e for kind, e in errors.items()})
    rows = out["us_per_call"]
    kinds = sorted({k for s in LINEAR_SHAPES for k in rows[s]})
    out["projection_matmul_ms_per_token"] = {
        kind: layers * sum(rows[s][kind] * c for s, c in PER_LAYER.items()) / 1e3
        for kind in kinds if all(kind in rows[s] for s in LINEAR_SHAPES)}
    return out


def main(argv: list[str] | None = None) -> dict:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "llm.json"))
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--context", type=int, default=8192)
    p.add_argument("--cap-gib", type=float, default=12.0)
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--skip-eager", action="store_true")
    p.add_argument("--skip-gemlite", action="store_true")
    p.add_argument("--int4-variants", nargs="+", default=["shipped", "64:int4:1", "64:0:1"],
                   help="'shipped' (the module defaults the app loads) and/or "
                        "group:head:fused-projections triples (head 0, int4 or int8)")
    p.add_argument("--kernels-only", action="store_true",
                   help="only the kernel tables (projections, LM head), no model")
    p.add_argument("--kernels-from", help="a previous llm.json whose GemLite rows to keep "
                   "(with --skip-gemlite: its autotuning takes ~11 s per shape)")
    p.add_argument("--real-quality", metavar="GGUF",
                   help="CPU only: KL of NF4 and int4 against a real checkpoint, merged into "
                        "--out under quality_real_checkpoint")
    p.add_argument("--quick", action="store_true", help="smaller smoke run")
    a = p.parse_args(argv)
    if a.quick:
        a.new_tokens, a.context = 32, 2048
    out = Path(a.out)
    if a.real_quality:
        res = json.loads(out.read_text()) if out.is_file() else {}
        res["quality_real_checkpoint"] = real_quality(a.real_quality)
        out.write_text(json.dumps(res, indent=2))
        print(json.dumps(res["quality_real_checkpoint"], indent=2))
        return res
    if not torch.cuda.is_available():
        raise SystemExit("bench/llm.py needs a CUDA GPU")
    if a.kernels_only:
        res = {"device": torch.cuda.get_device_name(0),
               "linear_kernels": linear_kernels(a.layers, gemlite=not a.skip_gemlite),
               "head_kernels": head_kernels()}
        out.write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=2))
        return res

    import bitsandbytes
    import transformers

    from studio.config import Settings
    from studio.context import build_studio
    from studio.devices import emulate_card
    res: dict = {
        "benchmark": "llm decode, batch 1, greedy, EOS ignored",
        "device": torch.cuda.get_device_name(0),
        "emulated_card_gib": a.cap_gib,
        "model": f"Llama-3.1-8B architecture, random weights, {a.layers} layers",
        "prompt_tokens": a.prompt, "new_tokens": a.new_tokens, "context": a.context,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__,
                     "bitsandbytes": bitsandbytes.__version__},
        "routes": {}, "errors": {},
    }
    if out.is_file():  # the CPU real-checkpoint quality section survives a GPU re-run
        old = json.loads(out.read_text()).get("quality_real_checkpoint")
        if old:
            res["quality_real_checkpoint"] = old
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        clean = json.loads(json.dumps(res, default=lambda o: None))
        for r in clean["routes"].values():
            for k in [k for k in r if k.startswith("_")]:
                del r[k]
        out.write_text(json.dumps(clean, indent=2))

    gen = torch.Generator().manual_seed(1234)
    vocab = 128256
    prompt = torch.randint(0, vocab, (1, a.prompt), generator=gen)
    ref_ids = torch.randint(0, vocab, (1, 96), generator=gen)
    long_prompt = torch.randint(0, vocab, (a.context - a.new_tokens,), generator=gen).tolist()
    tmp = Path(tempfile.mkdtemp(prefix="llm-bench-"))
    ckpt = make_checkpoint(tmp / "model", a.layers, ref_ids)
    res["checkpoint_seconds"] = ckpt["seconds"]
    bf16_logits = ckpt["ref_logits"]
    emulate_card(int(a.cap_gib * GiB))
    save()

    base = None
    if not a.skip_baseline:
        try:
            base = run_baseline(tmp / "model", prompt, a.new_tokens, ref_ids)
            res["routes"]["plain_generate_nf4"] = base
        except Exception as exc:
            res["errors"]["plain_generate_nf4"] = traceback.format_exc(limit=4)
            print("baseline failed:", exc, flush=True)
        save()

    studio = build_studio(Settings(home=tmp / "home", vram_budget=int(a.cap_gib * GiB)),
                          start_jobs=False)
    studio.models.warm_bytes = 0  # no background pinned copy during the timed runs
    ids = prompt[0].tolist()
    bw = bandwidth_tb_s(res["device"])
    res["hbm_tb_s"] = bw
    res["engine"] = {}
    # (name, CUDA graphs, decode attention, fused glue): "engine_cuda_graphs_nf4" is the
    # engine as it was before the int4 route (NF4, module-by-module step)
    routes_nf4 = [("engine_cuda_graphs_nf4", True, "matmul", False),
                  ("engine_cuda_graphs_nf4_fused_glue", True, "matmul", True),
                  ("engine_cuda_graphs_nf4_fused_glue_triton_attention", True, "triton", True)]
    if not a.skip_eager:
        routes_nf4.insert(0, ("engine_eager_nf4", False, "matmul", False))
    runs = [("nf4", "nf4", 128, False, routes_nf4)]
    for v in a.int4_variants:
        if v == "shipped":
            tag = "int4_shipped"
            routes = [(f"engine_cuda_graphs_{tag}", True, "auto", True),
                      (f"engine_cuda_graphs_{tag}_matmul_attention", True, "matmul", True),
                      (f"engine_cuda_graphs_{tag}_unfused", True, "matmul", False)]
            runs.append((tag, "int4", None, None, routes))
            continue
        g, h, f = v.split(":")
        group, head, fuse = int(g), {"0": False, "1": "int4"}.get(h, h), bool(int(f))
        tag = f"int4_g{group}" + (f"_{head}_head" if head else "") + ("_fused" if fuse else "")
        routes = [(f"engine_cuda_graphs_{tag}", True, "auto", True)]
        runs.append((tag, "int4", (group, fuse), head, routes))
    res["memory_before_each_engine"] = {}
    for tag, quant, group, head, routes in runs:
        res["memory_before_each_engine"][tag] = clean_memory()
        try:
            engine_routes(res, studio, tmp / "model", tag, quant, group, head, routes, base,
                          ids, long_prompt, ref_ids, bf16_logits, a, bw)
        except Exception:
            res["errors"][f"engine {tag}"] = traceback.format_exc(limit=8)
        studio.models.evict_all()
        gc.collect()
        torch.cuda.empty_cache()
        save()
    res["summary"] = summary(res)
    save()
    try:
        res["head_kernels"] = head_kernels()
    except Exception:
        res["errors"]["head_kernels"] = traceback.format_exc(limit=6)
    save()
    try:
        res["linear_kernels"] = linear_kernels(a.layers, gemlite=not a.skip_gemlite)
        if a.skip_gemlite and a.kernels_from and Path(a.kernels_from).is_file():
            prev = json.loads(Path(a.kernels_from).read_text())
            old = prev.get("linear_kernels", {})
            rows = {s: {k: v for k, v in r.items() if k.startswith("gemlite")}
                    for s, r in old.get("us_per_call", {}).items()}
            carried = old.get("gemlite_from_earlier_run")
            if not any(rows.values()) and carried and carried.get("us_per_call"):
                res["linear_kernels"]["gemlite_from_earlier_run"] = carried  # kept as it was
            else:
                res["linear_kernels"]["gemlite_from_earlier_run"] = {
                    "file": Path(a.kernels_from).name, "device": prev.get("device"),
                    "us_per_call": {s: r for s, r in rows.items() if r},
                    "first_call_s": {k: v for k, v in old.get("errors", {}).items()
                                     if "gemlite" in k}}
    except Exception:
        res["errors"]["linear_kernels"] = traceback.format_exc(limit=6)
    save()
    print(json.dumps(json.loads(out.read_text()), indent=2))
    return res


if __name__ == "__main__":
    main()
