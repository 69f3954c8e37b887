"""The fast decode path: a decode loop that owns its buffers, replayed as CUDA graphs.

Why: a plain ``generate()`` of an 8B model at batch 1 spends ~40 ms per token launching about a
thousand small kernels from Python, while the memory traffic needs ~2 ms (4-bit weights on an
H100). Here the KV cache is a fixed buffer, the decode step has fixed shapes, and the whole step
(every layer, the LM head) is captured once per attended-length bucket as a CUDA graph and then
replayed: one launch per token. The step calls the model's own modules (norms, projections,
MLP), so the engine's int4 layers (`studio.llm.int4`, tinygemm, LoRA on top), bitsandbytes NF4
layers (batch-1 ``gemv_4bit``), bf16 layers and attached PEFT LoRA layers all work unchanged;
only the attention glue (RoPE, cache write, SDPA) is written here.

Supported: Llama-family decoder layouts (``llama``, ``qwen2``; what the studio ships), also as
the language model of a vision-language model (LLaVA's Llama, Qwen2-VL's and Qwen2.5-VL's
text stack, M-RoPE included): the vision encoder and projector run once, and the prompt enters
`StaticDecoder.prefill` as embeddings (`PrefillInputs`). Other architectures use the generic
``generate()`` path in `studio.llm.engine`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger("studio.llm.fast")

FAST_MODEL_TYPES = ("llama", "qwen2", "qwen2_vl_text", "qwen2_5_vl_text")
BUCKET = 256  # attended KV length is rounded up to this; one CUDA graph per bucket
# "auto" decode attention: the Triton kernels up to this many attended tokens, the two batched
# GEMMs beyond; None: Triton at every length (bench/llm.py's decode_attention_kernels table)
TRITON_MAX_ATTEND: int | None = None


def decoder_stack(model):
    """The decoder (embed_tokens, layers, norm, rotary_emb) under a model's LM head: ``model.model``
    for a causal LM, its ``language_model`` (or ``text_model``) for a vision-language model."""
    inner = getattr(model, "model", None)
    if inner is None or hasattr(inner, "layers"):
        return inner
    for name in ("language_model", "text_model"):
        stack = getattr(inner, name, None)
        if stack is not None and hasattr(stack, "layers"):
            return stack
    return None


def text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def supports_fast_decode(model) -> bool:
    """True when the model has the decoder layout `StaticDecoder` drives."""
    if getattr(model, "config", None) is None:
        return False
    cfg = text_config(model)
    if getattr(cfg, "model_type", None) not in FAST_MODEL_TYPES:
        return False
    if getattr(cfg, "use_sliding_window", False):
        return False
    return decoder_stack(model) is not None and hasattr(model, "lm_head")


@dataclass
class PrefillInputs:
    """A prompt the model has already embedded (a VLM: the vision encoder and projector ran once
    and their features replaced the image placeholder tokens) and its RoPE positions."""

    embeds: torch.Tensor  # (1, T, hidden)
    positions: torch.Tensor | None = None  # (1, T), or (3, 1, T) for M-RoPE; None: 0..T-1


@dataclass
class DecodeStep:
    """One generated token and how long the step took (for tokens/s)."""

    token: int
    index: int  # 0 for the first generated token


class StaticDecoder:
    """Static KV cache + decode step for one loaded model; batch 1; not thread safe.

    The owner (the engine's loaded-model record) holds a lock around `generate`.
    """

    def __init__(self, model, max_len: int, use_cuda_graphs: bool | None = None):
        if not supports_fast_decode(model):
            raise ValueError(f"fast decode does not support {type(model).__name__}")
        cfg = text_config(model)
        self.model = model
        self.inner = decoder_stack(model)
        self.layers = list(self.inner.layers)
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.n_rep = self.n_heads // self.n_kv
        emb = self.inner.embed_tokens.weight
        self.device = emb.device
        self.dtype = emb.dtype if emb.dtype.is_floating_point else torch.bfloat16
        self.max_len = int(max_len)
        if use_cuda_graphs is None:
            use_cuda_graphs = self.device.type == "cuda"
        self.use_cuda_graphs = bool(use_cuda_graphs) and self.device.type == "cuda"
        # "auto": the Triton split-K kernels (`studio.llm.attention`; in the fused step also
        # RoPE and the cache write) at every length up to TRITON_MAX_ATTEND (None: all), the
        # two batched GEMMs ("matmul") beyond. bench/llm.py's decode_attention_kernels, H200,
        # 32 layers: 0.27 vs 0.81 ms per token at 768 tokens, 0.61 vs 1.30 at 8k, so Triton
        # everywhere. "triton", "matmul", "sdpa" force one.
        from studio.llm import attention

        self.decode_attention = "auto" if attention.supported(self.head_dim, self.device) \
            else "matmul"
        # The decode step's glue (residual + RMSNorm, RoPE, SiLU*up) as a few fused functions,
        # compiled into small kernels on CUDA (one Inductor compile per function, reused by
        # every layer and graph). fuse_glue=False: the module-by-module `_forward` (the eager
        # reference the GPU tests compare with).
        self.fuse_glue = True
        self.compile_glue = self.device.type == "cuda"
        self._glue_fns: dict | None = None
        shape = (1, self.n_kv, self.max_len, self.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device)
                        for _ in self.layers]
        self.v_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device)
                        for _ in self.layers]
        self.cos, self.sin = self._rope_tables()
        self.arange = torch.arange(self.max_len, device=self.device)
        self.tok = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self.pos = torch.zeros((1,), dtype=torch.long, device=self.device)
        # RoPE position of the decode step: the cache index plus `rope_offset` (M-RoPE gives an
        # image fewer positions than tokens, so later text sits at a negative offset)
        self.rope_pos = torch.zeros((1,), dtype=torch.long, device=self.device)
        self.rope_offset = 0
        self.cached_ids: list[int] = []  # tokens whose K/V are in the cache, in order
        self._embedded = False  # the cache holds an embedded prompt: no prefix reuse
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None

    # ----- setup ----------------------------------------------------------------------------
    @torch.no_grad()
    def _rope_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for every position, from the model's own rotary module (rope scaling too)."""
        rotary = self.inner.rotary_emb
        pos = torch.arange(self.max_len, device=self.device)[None]
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)
        cos, sin = rotary(probe, pos)
        return cos[0].to(self.dtype), sin[0].to(self.dtype)

    def reset_graphs(self) -> None:
        """Forget captured graphs (after an adapter is attached or detached).

        The memory pool goes with them: a pool whose graphs are all freed cannot be reused.
        """
        self._graphs.clear()
        self._pool = None
        self.cached_ids = []

    def release(self) -> None:
        """Free the cache, tables and graphs (the model goes to the warm tier); `rebuild`
        makes them again once the weights are back on the device."""
        self.reset_graphs()
        self.k_cache, self.v_cache = [], []
        self.cos = self.sin = None

    @torch.no_grad()
    def rebuild(self) -> None:
        """After a warm-tier restore: a fresh cache on the weights' device, RoPE tables from
        the restored rotary module, graphs captured anew on the next step (the old ones held
        the device pointers of tensors that are gone)."""
        self.reset_graphs()
        self.device = self.inner.embed_tokens.weight.device
        shape = (1, self.n_kv, self.max_len, self.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device)
                        for _ in self.layers]
        self.v_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device)
                        for _ in self.layers]
        self.cos, self.sin = self._rope_tables()
        for name in ("arange", "tok", "pos", "rope_pos"):
            setattr(self, name, getattr(self, name).to(self.device))
        self._embedded = False

    def forget_prefix(self) -> None:
        """Make the next prefill start from scratch (benchmarks; the cache stays allocated)."""
        self.cached_ids = []

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k_cache + self.v_cache)

    # ----- the forward pieces ---------------------------------------------------------------
    # Per decode step the GPU runs a few kernels per layer besides the 4-bit matmuls, so the
    # glue is kept lean: RoPE tables and the mask are built once per step (not per layer),
    # RoPE is a roll + addcmul, RMSNorm is torch's fused op, attention two batched GEMMs.
    def _norm(self, module, h: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(h, (h.shape[-1],), module.weight, module.variance_epsilon)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor
              ) -> torch.Tensor:
        """x*cos + rotate_half(x)*sin, where rotate_half(x)*sin == roll(x)*(-sin1, sin2)."""
        return torch.addcmul(x * cos, x.roll(self.head_dim // 2, -1), sin_signed)

    def _attention(self, i: int, layer, h: torch.Tensor, pos: torch.Tensor, start: int,
                   attend: int, rope: tuple[torch.Tensor, torch.Tensor],
                   mask: torch.Tensor | None) -> torch.Tensor:
        attn = layer.self_attn
        t = h.shape[1]
        q, k, v = _qkv(attn, h)
        q = q.reshape(1, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.reshape(1, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = v.reshape(1, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = self._rope(q, *rope), self._rope(k, *rope)
        self.k_cache[i].index_copy_(2, pos, k.to(self.dtype))
        self.v_cache[i].index_copy_(2, pos, v.to(self.dtype))
        if t == 1:
            # Decode: the n_rep query heads of one KV group act as n_rep "rows" against it,
            # so grouped-query attention needs no repeat of the cache.
            qg = q.reshape(1, self.n_kv, self.n_rep, self.head_dim)
            kk, vv = self.k_cache[i][:, :, :attend], self.v_cache[i][:, :, :attend]
            out = self._decode_attention(i, qg, kk, vv, mask, pos, attend)
            out = out.reshape(1, self.n_heads, 1, self.head_dim)
        elif start == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                 enable_gqa=self.n_rep > 1)
        else:  # prefill after a reused prefix: attend to the cache with an offset causal mask
            kk = self.k_cache[i][:, :, :start + t]
            vv = self.v_cache[i][:, :, :start + t]
            out = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask,
                                                 enable_gqa=self.n_rep > 1)
        out = out.transpose(1, 2).reshape(1, t, self.n_heads * self.head_dim)
        return attn.o_proj(out)

    def _attention_kind(self, attend: int) -> str:
        if self.decode_attention == "auto":
            return "triton" if TRITON_MAX_ATTEND is None or attend <= TRITON_MAX_ATTEND \
                else "matmul"
        return self.decode_attention

    def _decode_attention(self, i: int, qg, kk, vv, mask, pos: torch.Tensor, attend: int):
        kind = self._attention_kind(attend)
        if kind == "triton":
            from studio.llm.attention import decode_attention

            return decode_attention(qg, self.k_cache[i], self.v_cache[i], pos, attend)
        if kind == "sdpa":
            return F.scaled_dot_product_attention(qg, kk, vv, attn_mask=mask)
        return self._matmul_attention(qg, kk, vv, mask)

    def _matmul_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          bias: torch.Tensor) -> torch.Tensor:
        """Decode attention as two batched GEMMs (`bias` is 0 / -inf): with 4 query rows per
        KV head, cuBLAS spreads a long cache over the whole GPU, where a fused kernel gets a
        few blocks."""
        b = q.shape[1]
        scores = torch.baddbmm(bias.expand(b, q.shape[2], -1), q[0], k[0].transpose(-1, -2),
                               alpha=self.head_dim ** -0.5)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
        return torch.matmul(probs, v[0])[None]

    def _step_inputs(self, pos: torch.Tensor, start: int, attend: int, t: int,
                     rope_pos: torch.Tensor | None = None,
                     rope: tuple[torch.Tensor, torch.Tensor] | None = None):
        """RoPE factors and attention mask for these positions, shared by every layer. RoPE
        comes from `rope` (cos, sin per position, precomputed) or the tables at `rope_pos`
        (default: the cache positions)."""
        if rope is not None:
            cos, sin = rope[0][None, None], rope[1][None, None]
        else:
            idx = pos if rope_pos is None else rope_pos
            cos = self.cos[idx][None, None]
            sin = self.sin[idx][None, None]
        half = self.head_dim // 2
        sin_signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        mask = None
        if t == 1:
            kind = self._attention_kind(attend)
            visible = self.arange[:attend] <= pos
            if kind == "sdpa":
                mask = visible[None, None, None, :]
            elif kind == "triton":
                mask = None  # the kernel reads the length from `pos`
            else:
                zero = torch.zeros((), dtype=self.dtype, device=self.device)
                mask = torch.where(visible, zero, float("-inf"))[None, :]
        elif start > 0:
            mask = (self.arange[:start + t][None, :] <= pos[:, None])[None, None]
        return (cos, sin_signed), mask

    # ----- the decode step with fused glue --------------------------------------------------
    def _glue(self) -> dict:
        if self._glue_fns is None:
            fns = {"add_norm": _add_norm, "rope_qk": _rope_qk, "silu_mul": _silu_mul}
            if self.compile_glue:
                compiled = {k: torch.compile(f, dynamic=False, fullgraph=True)
                            for k, f in fns.items()}
                try:  # compile now, on the decode shapes, outside any graph capture
                    self._probe_glue(compiled)
                    fns = compiled
                except Exception as exc:  # no working compiler here: the same math, eager
                    log.warning("compiling the decode glue failed (%s); running it eager", exc)
            self._glue_fns = fns
        return self._glue_fns

    def _probe_glue(self, fns: dict) -> None:
        hidden = self.inner.embed_tokens.weight.shape[1]
        mlp = self.layers[0].mlp
        kw = dict(dtype=self.dtype, device=self.device)
        h = torch.zeros(1, 1, hidden, **kw)
        norm = self.layers[0].post_attention_layernorm
        fns["add_norm"](h, h, norm.weight, norm.variance_epsilon)
        q = torch.zeros(1, 1, self.n_heads * self.head_dim, **kw)
        k = torch.zeros(1, 1, self.n_kv * self.head_dim, **kw)
        cs = torch.zeros(1, 1, 1, self.head_dim, **kw)
        fns["rope_qk"](q, k, cs, cs, self.n_heads, self.n_kv, self.head_dim)
        if _plain_mlp(mlp):
            g = torch.zeros(1, 1, mlp.down_proj.in_features, **kw)
            fns["silu_mul"](g, g)

    def _decode_forward(self, ids: torch.Tensor, pos: torch.Tensor, attend: int,
                        rope_pos: torch.Tensor) -> torch.Tensor:
        """One decode step (t == 1) through the same modules as `_forward`, with the glue
        between them fused: each layer's residual add and the next RMSNorm are one kernel,
        RoPE of q and k one, SiLU(gate) * up one."""
        g = self._glue()
        rope, mask = self._step_inputs(pos, 0, attend, 1, rope_pos)
        h = self.inner.embed_tokens(ids).to(self.dtype)
        first = self.layers[0].input_layernorm
        x = self._norm(first, h)
        nh, hd = self.n_heads, self.head_dim
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = _qkv(attn, x)
            out = self._step_attention(i, q, k, v, rope, mask, pos, attend, g["rope_qk"])
            a = attn.o_proj(out.reshape(1, 1, nh * hd))
            post = layer.post_attention_layernorm
            h, x = g["add_norm"](h, a, post.weight, post.variance_epsilon)
            m = _mlp(layer.mlp, x, g["silu_mul"])
            nxt = self.layers[i + 1].input_layernorm if i + 1 < len(self.layers) \
                else self.inner.norm
            h, x = g["add_norm"](h, m, nxt.weight, nxt.variance_epsilon)
        return self.model.lm_head(x)[:, -1].float()

    def _step_attention(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        rope, mask, pos: torch.Tensor, attend: int, rope_qk) -> torch.Tensor:
        """Layer `i`'s attention for one decode step from its q/k/v projections (before RoPE):
        RoPE, the cache write and attention as the one fused Triton call
        (`studio.llm.attention.fused_decode_attention`) on the "triton" route, else RoPE
        (`rope_qk`), two cache writes and the chosen attention. Returns (1, n_kv, n_rep, hd)."""
        nkv, hd = self.n_kv, self.head_dim
        if self._attention_kind(attend) == "triton":
            from studio.llm.attention import fused_decode_attention

            return fused_decode_attention(q, k, v, rope[0], rope[1], self.k_cache[i],
                                          self.v_cache[i], pos, attend)
        q, k = rope_qk(q, k, rope[0], rope[1], self.n_heads, nkv, hd)
        self.k_cache[i].index_copy_(2, pos, k)
        self.v_cache[i].index_copy_(2, pos, v.reshape(1, nkv, 1, hd).to(self.dtype))
        qg = q.reshape(1, nkv, self.n_rep, hd)
        kk, vv = self.k_cache[i][:, :, :attend], self.v_cache[i][:, :, :attend]
        return self._decode_attention(i, qg, kk, vv, mask, pos, attend)

    def _forward(self, ids: torch.Tensor | None, pos: torch.Tensor, start: int,
                 attend: int, embeds: torch.Tensor | None = None,
                 rope_pos: torch.Tensor | None = None,
                 rope_cs: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Run the layers over `ids` (or their `embeds`) at cache positions `pos`; logits of the
        last position (fp32)."""
        h = (self.inner.embed_tokens(ids) if embeds is None else embeds).to(self.dtype)
        rope, mask = self._step_inputs(pos, start, attend, h.shape[1], rope_pos, rope_cs)
        for i, layer in enumerate(self.layers):
            h = h + self._attention(i, layer, self._norm(layer.input_layernorm, h), pos, start,
                                    attend, rope, mask)
            h = h + _mlp(layer.mlp, self._norm(layer.post_attention_layernorm, h))
        h = self._norm(self.inner.norm, h[:, -1:])
        return self.model.lm_head(h)[:, -1].float()

    def _bucket(self, length: int) -> int:
        return min(self.max_len, -(-length // BUCKET) * BUCKET)

    # ----- prefill and decode ---------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, ids: list[int], chunk: int = 2048,
                inputs: PrefillInputs | None = None) -> torch.Tensor:
        """Fill the cache for `ids`, reusing the longest prefix already cached. With `inputs`
        the prompt enters as its embeddings (and RoPE positions) and nothing is reused: the same
        ids may stand for another image."""
        if len(ids) >= self.max_len:
            raise ValueError(f"prompt of {len(ids)} tokens does not fit the {self.max_len}-token "
                             "context")
        reuse = 0
        if inputs is None and not self._embedded:
            for a, b in zip(self.cached_ids, ids[:-1], strict=False):
                if a != b:
                    break
                reuse += 1
        rope = None
        self.rope_offset = 0
        if inputs is not None:
            if inputs.embeds.shape[1] != len(ids):
                raise ValueError(f"{inputs.embeds.shape[1]} embeddings for {len(ids)} tokens")
            if inputs.positions is not None:
                positions = inputs.positions.to(self.device)
                probe = torch.zeros(1, dtype=self.dtype, device=self.device)
                cos, sin = self.inner.rotary_emb(probe, positions)
                rope = (cos[0].to(self.dtype), sin[0].to(self.dtype))
                self.rope_offset = int(positions.max()) + 1 - len(ids)
        self._embedded = inputs is not None
        logits = None
        start = reuse
        while start < len(ids):
            part = ids[start:start + chunk]
            end = start + len(part)
            t = torch.tensor([part], dtype=torch.long, device=self.device)
            pos = torch.arange(start, end, device=self.device)
            embeds = None if inputs is None else inputs.embeds[:, start:end].to(self.device)
            rope_cs = None if rope is None else (rope[0][start:end], rope[1][start:end])
            logits = self._forward(t, pos, start, end, embeds=embeds, rope_cs=rope_cs)
            start = end
        self.cached_ids = list(ids)
        return logits

    @torch.inference_mode()
    def step(self, token: int) -> torch.Tensor:
        """Append `token` at the next position; return the next-token logits (fp32, (1, V))."""
        p = len(self.cached_ids)
        if p >= self.max_len:
            raise ValueError("context is full")
        attend = self._bucket(p + 1)
        self.tok.fill_(token)
        self.pos.fill_(p)
        self.rope_pos.fill_(p + self.rope_offset)
        self.cached_ids.append(token)
        if not self.use_cuda_graphs:
            return self._step_fn()(self.tok, self.pos, p, attend, rope_pos=self.rope_pos)
        graph = self._graphs.get(attend)
        if graph is None:
            graph = self._capture(attend)
        graph[0].replay()
        return graph[1]

    def _step_fn(self):
        """The decode step: fused glue (`_decode_forward`) for the plain Llama layout, the
        module-by-module `_forward` otherwise (and when `fuse_glue` is off)."""
        if self.fuse_glue and self._plain_layers():
            return lambda ids, pos, start, attend, rope_pos: self._decode_forward(
                ids, pos, attend, rope_pos)
        return self._forward

    def _plain_layers(self) -> bool:
        return all(hasattr(layer, "post_attention_layernorm") and
                   hasattr(layer.post_attention_layernorm, "variance_epsilon")
                   for layer in self.layers) and hasattr(self.inner.norm, "variance_epsilon")

    def _capture(self, attend: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture the decode step for one attended length (warm up on a side stream first)."""
        start = int(self.pos.item())
        # one side stream for every capture of this decoder: cuBLAS keeps a workspace per
        # stream it ran on (32 MiB on Hopper, never freed), so a new stream per captured bucket
        # grew the allocated memory with every bucket on routes that call cuBLAS
        if getattr(self, "_side", None) is None or self._side.device != self.device:
            self._side = torch.cuda.Stream(self.device)
        side = self._side
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # writes the same K/V the real step writes: harmless
                self._step_fn()(self.tok, self.pos, start, attend, rope_pos=self.rope_pos)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._step_fn()(self.tok, self.pos, start, attend, rope_pos=self.rope_pos)
        self._graphs[attend] = (graph, out)
        log.info("captured decode graph for %d attended tokens", attend)
        return graph, out

    def generate(self, prompt_ids: list[int], max_new_tokens: int, sample,
                 should_stop=None, eos_ids: set[int] | frozenset = frozenset(),
                 inputs: PrefillInputs | None = None) -> Iterator[int]:
        """Yield generated token ids one by one.

        `sample(logits, ids_so_far) -> int` picks the next token (greedy or sampled, on the
        device). `should_stop()` is checked before every step, so Stop ends generation within
        one token. `inputs`: the prompt as embeddings (see `prefill`).
        """
        room = self.max_len - len(prompt_ids)
        max_new_tokens = max(0, min(max_new_tokens, room))
        if max_new_tokens == 0:
            return
        logits = self.prefill(prompt_ids, inputs=inputs)
        for n in range(max_new_tokens):
            if should_stop is not None and should_stop():
                return
            token = sample(logits, self.cached_ids)
            yield token
            if token in eos_ids or n == max_new_tokens - 1:
                return
            logits = self.step(token)


# ----- the fused glue (plain functions: compiled on CUDA, the eager reference elsewhere) --------
def _add_norm(h: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    """(h + delta, RMSNorm(h + delta) * weight): the residual add and the next norm."""
    h = h + delta
    return h, F.rms_norm(h, (h.shape[-1],), weight, eps)


def _rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor,
             nh: int, nkv: int, hd: int):
    """RoPE of one decode position's q (1, nh*hd) and k (1, nkv*hd) -> (1, nh, 1, hd) and
    (1, nkv, 1, hd), in the cache's layout."""
    q = q.view(1, 1, nh, hd).transpose(1, 2)
    k = k.view(1, 1, nkv, hd).transpose(1, 2)
    half = hd // 2
    q = torch.addcmul(q * cos, q.roll(half, -1), sin_signed)
    k = torch.addcmul(k * cos, k.roll(half, -1), sin_signed)
    return q, k


def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def _qkv(attn, h: torch.Tensor):
    """q, k, v projections of `h`: one matmul when they are fused (`studio.llm.int4`)."""
    fused = getattr(attn, "qkv_proj", None)
    if fused is None:
        return attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
    qkv = fused(h)
    a, b = attn.q_proj.out_features, attn.q_proj.out_features + attn.k_proj.out_features
    return qkv[..., :a], qkv[..., a:b], qkv[..., b:]


def _mlp(mlp, x: torch.Tensor, silu_mul=None) -> torch.Tensor:
    """The MLP of `x`: SiLU(gate) * up -> down through `silu_mul` (fused on CUDA), gate and up
    as one matmul when fused; other MLPs run as their module."""
    if not _plain_mlp(mlp):
        return mlp(x)
    silu_mul = silu_mul or _silu_mul
    fused = getattr(mlp, "gate_up_proj", None)
    if fused is None:
        return mlp.down_proj(silu_mul(mlp.gate_proj(x), mlp.up_proj(x)))
    gu = fused(x)
    n = mlp.gate_proj.out_features
    return mlp.down_proj(silu_mul(gu[..., :n], gu[..., n:]))


def _plain_mlp(mlp) -> bool:
    """A Llama MLP (SiLU gate) whose projections are called directly; anything else (another
    activation) runs as the module."""
    act = getattr(mlp, "act_fn", None)
    return all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")) and \
        (isinstance(act, torch.nn.SiLU) or type(act).__name__ in ("SiLU", "SiLUActivation"))
