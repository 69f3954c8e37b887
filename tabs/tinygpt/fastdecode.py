"""Fast KV-cache generation on CUDA: the one-token decode step replayed as a CUDA graph.

Why: a ~10M model at batch 1 does almost no arithmetic per token, so a plain decode step costs
what Python and ~100 kernel launches cost (~3 ms on an H100), the same as re-reading all 512
tokens. The cache then buys nothing. Here the step has fixed shapes (it attends over the whole
preallocated cache, with a mask hiding the slots not filled yet), so it is captured once as a
CUDA graph and replayed: one launch per token.

The step calls the model's own modules and helpers (`apply_rope`, `attention_bias`), so it
computes what `GPT.forward` computes; a GPU test checks the greedy tokens are the same as
without the cache. See `studio/llm/fast.py` for the same idea on Llama-family models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .model import GPT, KVCache, apply_rope, attention_bias, rope_cos_sin, sample_next

BUCKET = 128  # cache length is rounded up to this, so nearby lengths share one graph
# cuDNN attention plans per shape and is slow for tiny decode steps; see model.generate.
BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def graph_decode_applies(model: GPT, idx: torch.Tensor) -> bool:
    """The graph path runs on CUDA, in eval mode (no dropout), outside autocast."""
    return (idx.is_cuda and not model.training
            and not torch.is_autocast_enabled("cuda"))


class GraphDecoder:
    """A static KV cache and the captured one-token step for one (model, batch, cache length).

    `prefill` runs the prompt through the model's ordinary forward into the same cache
    buffers; `step` then appends one token per replay. Not thread safe.
    """

    def __init__(self, model: GPT, batch: int, max_len: int):
        cfg = model.config
        self.model = model
        self.batch = batch
        self.max_len = -(-max_len // BUCKET) * BUCKET
        self.cache: KVCache = model.new_cache(batch, self.max_len)
        device = self.cache.k.device
        self.head_dim = cfg.n_embd // cfg.n_head
        self.k_pos = torch.arange(self.max_len, device=device)
        self.rope = (rope_cos_sin(self.k_pos, self.head_dim) if cfg.pos == "rope" else None)
        self.slopes = model.alibi_slopes if cfg.pos == "alibi" else None
        # Graph inputs and output: replays read and write these same tensors.
        self.tok = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.pos = torch.zeros((1,), dtype=torch.long, device=device)
        # On CPU nothing is captured and `step` runs the same code eagerly (tests use that).
        self.graph, self.logits = self._capture() if device.type == "cuda" else (None, None)

    def matches(self, model: GPT, batch: int, max_len: int, device: torch.device) -> bool:
        return (model is self.model and batch == self.batch and max_len <= self.max_len
                and self.cache.k.device == device
                and self.cache.k.dtype == next(model.parameters()).dtype)

    def _step(self) -> torch.Tensor:
        """Token `tok` at position `pos`: write its keys/values, return next-token logits
        (B, vocab), then move `pos` on. Shapes never depend on the position."""
        m, pos = self.model, self.pos
        B, C = self.batch, m.config.n_embd
        x = m.wte(self.tok)
        if m.wpe is not None:
            x = x + m.wpe(pos)
        x = m.drop(x)
        rope = (self.rope[0][pos], self.rope[1][pos]) if self.rope is not None else None
        mask = attention_bias(pos, self.k_pos, self.slopes)  # hides the unfilled slots too
        # Additive float mask built once per step (SDPA would convert a boolean one in every
        # layer, the same way: 0 where visible, -inf elsewhere).
        mask = (torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
                .masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool
                else mask.to(x.dtype))
        for i, block in enumerate(m.blocks):
            attn = block.attn
            # (B, 1, 3C) -> (3, B, heads, 1, head_dim): q, k, v stacked, so RoPE rotates q and
            # k in one set of kernels (the step's cost is its kernel count, not its maths).
            qkv = attn.c_attn(block.ln_1(x)).view(B, 1, 3, attn.n_head, self.head_dim)
            qkv = qkv.permute(2, 0, 3, 1, 4)
            qk = apply_rope(qkv[:2], *rope) if rope is not None else qkv[:2]
            q, k, v = qk[0], qk[1], qkv[2]
            self.cache.k[i].index_copy_(2, pos, k)
            self.cache.v[i].index_copy_(2, pos, v)
            y = F.scaled_dot_product_attention(q, self.cache.k[i], self.cache.v[i],
                                               attn_mask=mask)
            x = x + attn.resid_dropout(attn.c_proj(y.transpose(1, 2).reshape(B, 1, C)))
            x = x + block.mlp(block.ln_2(x))
        logits = m.lm_head(m.ln_f(x))[:, -1, :]
        pos.add_(1)
        return logits

    @torch.no_grad()
    def _capture(self) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Warm up on a side stream (as CUDA graphs require), then capture one step. The
        warm-up writes slot 0 of the cache, which the next prefill overwrites."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), sdpa_kernel(BACKENDS):
            for _ in range(2):
                self.pos.zero_()
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.pos.zero_()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), sdpa_kernel(BACKENDS):
            logits = self._step()
        return graph, logits

    @torch.no_grad()
    def prefill(self, idx: torch.Tensor) -> torch.Tensor:
        """Run the prompt through the model's own forward into the cache; last logits (B, V).
        Slots past the prompt may hold an older text's keys: the step's mask hides them."""
        self.cache.length = 0
        with sdpa_kernel(BACKENDS):
            logits, _ = self.model(idx, cache=self.cache, last_only=True)
        self.pos.fill_(idx.shape[1])
        return logits[:, -1, :]

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Append `token` (B, 1) at the next position; next-token logits (B, V). The returned
        tensor is overwritten by the next replay."""
        self.tok.copy_(token)
        if self.graph is None:
            with torch.no_grad():
                return self._step()
        self.graph.replay()
        return self.logits


def decoder_for(model: GPT, batch: int, max_len: int, device: torch.device) -> GraphDecoder:
    """The model's decoder, captured again only when batch, length, device or dtype changed.
    One is kept per model: its cache and graph stay allocated between generations."""
    dec = getattr(model, "_graph_decoder", None)
    if dec is None or not dec.matches(model, batch, max_len, device):
        model._graph_decoder = None  # free the old cache before allocating a new one
        dec = GraphDecoder(model, batch, max_len)
        model._graph_decoder = dec
    return dec


@torch.no_grad()
def graph_generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float,
                   top_k: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """`generate(use_cache=True)` with the decode step replayed as a CUDA graph. No host sync
    per token: tokens are picked and fed back on the GPU."""
    B, T = idx.shape
    dec = decoder_for(model, B, T + max_new_tokens, idx.device)
    out = torch.empty((B, T + max_new_tokens), dtype=idx.dtype, device=idx.device)
    out[:, :T] = idx
    logits = dec.prefill(idx)
    for i in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, generator)
        out[:, T + i:T + i + 1] = nxt
        if i < max_new_tokens - 1:
            logits = dec.step(nxt)
    return out
