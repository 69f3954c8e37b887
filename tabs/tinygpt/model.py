"""A small decoder-only transformer (GPT), written to be read top to bottom.

After nanoGPT's ``model.py``, with three ways to tell the model where a token sits:

- ``learned``: a trained vector per position (GPT-2). It cannot go past the trained context.
- ``rope``: rotary embeddings rotate queries and keys by an angle that grows with position, so
  attention scores depend on the *distance* between tokens (LLaMA).
- ``alibi``: no position vectors at all; each head subtracts ``slope * distance`` from its
  attention scores, so far-away tokens count less (BLOOM).

Attention runs through PyTorch's fused ``scaled_dot_product_attention`` (SDPA). The causal mask
stops a token from looking at later tokens. The output layer shares its weights with the token
embedding (weight tying). ``KVCache`` keeps the keys and values of tokens already seen, so
generation computes one new token per step instead of re-reading the whole text.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

POS_SCHEMES = ("learned", "rope", "alibi")


@dataclass
class GPTConfig:
    """The shape of the network; saved with every checkpoint."""

    vocab_size: int = 256
    block_size: int = 128  # the training context, in tokens
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    pos: str = "rope"  # learned | rope | alibi
    bias: bool = False  # biases in linear layers and layer norms (GPT-2 had them)

    def __post_init__(self) -> None:
        if self.pos not in POS_SCHEMES:
            raise ValueError(f"positional scheme must be one of {POS_SCHEMES}, not {self.pos!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"width {self.n_embd} must be divisible by the heads {self.n_head}")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("RoPE needs an even head size (width / heads)")

    def to_dict(self) -> dict:
        return asdict(self)


# ----- positions ---------------------------------------------------------------------------------
def rope_cos_sin(positions: torch.Tensor, head_dim: int,
                 base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles for rotary embeddings: pair i of a head turns by ``pos * base^(-2i/head_dim)``.
    Low pairs turn fast (fine position), high pairs slowly (coarse position)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]  # (T, head_dim/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x1, x2) pair of a query or key (B, H, T, head_dim) by its angle."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return rotated.type_as(x)


def alibi_slopes(n_head: int) -> torch.Tensor:
    """One slope per head, a geometric series (1/2, 1/4, ... for 8 heads), as in the paper.
    For a head count that is not a power of two, the paper interleaves two series."""

    def series(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_head).is_integer():
        return torch.tensor(series(n_head))
    closest = 2 ** math.floor(math.log2(n_head))
    return torch.tensor(series(closest) + series(2 * closest)[0::2][: n_head - closest])


def attention_bias(q_pos: torch.Tensor, k_pos: torch.Tensor,
                   slopes: torch.Tensor | None) -> torch.Tensor:
    """The mask SDPA adds to attention scores, shape (H or 1, Tq, Tk).

    Causal: a query at position p may only see keys at positions <= p (the future gets -inf).
    ALiBi: on top of that, subtract ``slope * distance`` per head.
    """
    distance = q_pos[:, None] - k_pos[None, :]  # (Tq, Tk), >= 0 for the past
    future = distance < 0
    if slopes is None:
        return ~future[None]  # boolean: True = may attend
    bias = -slopes.to(q_pos.device)[:, None, None] * distance[None].float()
    return bias.masked_fill(future[None], float("-inf"))


# ----- the KV cache ------------------------------------------------------------------------------
class KVCache:
    """Keys and values of every layer for the tokens seen so far, in buffers allocated once.

    Each generation step writes one token's keys and values and attends over the filled part,
    so a step costs O(length) instead of re-running the whole sequence (O(length^2)).
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device | str, dtype: torch.dtype = torch.float32):
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # tokens already stored
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor,
                                                                            torch.Tensor]:
        """Store the new keys/values of one layer; return all keys/values up to them."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} tokens > {self.max_len}")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        """Called once per forward, after every layer has stored its part."""
        self.length += n


# ----- the network -------------------------------------------------------------------------------
class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head = cfg.n_head
        self.pos = cfg.pos
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v at once
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                mask: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, heads, T, head_dim): every head attends on its own slice
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)  # ALiBi bias in the compute dtype (autocast)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
            dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, mask, cache):
        x = x + self.attn(self.ln_1(x), rope, mask, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token ids in, next-token logits out."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        # Weight tying: reading a token in and writing it out use the same vectors; it saves
        # vocab * width parameters and helps small models.
        self.lm_head.weight = self.wte.weight
        slopes = alibi_slopes(cfg.n_head) if cfg.pos == "alibi" else torch.empty(0)
        self.register_buffer("alibi_slopes", slopes, persistent=False)
        self.apply(self._init_weights)
        # GPT-2: scale the projections into the residual stream by 1/sqrt(2 * layers), so the
        # stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        """Parameters, counting the tied embedding once."""
        return sum(p.numel() for p in self.parameters())

    def max_positions(self) -> int | None:
        """The longest sequence the model can take: learned positions stop at the training
        context; RoPE and ALiBi compute positions on the fly (quality past it is the question
        the length-extrapolation check answers)."""
        return self.config.block_size if self.config.pos == "learned" else None

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None,
                last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) (or (B, 1, vocab) with `last_only`) and, with `targets`, the
        mean cross-entropy loss. With a `cache`, `idx` holds only the tokens not yet seen."""
        B, T = idx.shape
        offset = cache.length if cache is not None else 0
        limit = self.max_positions()
        if limit is not None and offset + T > limit:
            raise ValueError(f"{offset + T} tokens is more than the {limit} learned positions")
        q_pos = torch.arange(offset, offset + T, device=idx.device)
        k_pos = torch.arange(0, offset + T, device=idx.device)

        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(q_pos)
        x = self.drop(x)
        head_dim = self.config.n_embd // self.config.n_head
        rope = rope_cos_sin(q_pos, head_dim) if self.config.pos == "rope" else None
        if self.config.pos == "alibi":
            mask = attention_bias(q_pos, k_pos, self.alibi_slopes)
        elif offset and T > 1:  # new tokens after cached ones: causal mask with an offset
            mask = attention_bias(q_pos, k_pos, None)
        else:  # no cache (SDPA's own is_causal), or one new token (it may see everything)
            mask = None
        for block in self.blocks:
            x = block(x, rope, mask, cache)
        if cache is not None:
            cache.advance(T)
        x = self.ln_f(x)
        if last_only:
            x = x[:, -1:, :]  # generation needs only the next token's logits
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = next(self.parameters())
        return KVCache(self.config.n_layer, batch, self.config.n_head, max_len,
                       self.config.n_embd // self.config.n_head, p.device, p.dtype)


# ----- generation --------------------------------------------------------------------------------
def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token from (B, vocab) logits: greedy at temperature 0, else sample from the
    softmax of logits / temperature, restricted to the `top_k` most likely tokens."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None, cuda_graph: bool = True) -> torch.Tensor:
    """Continue `idx` (B, T) by `max_new_tokens` tokens.

    Without the cache every step runs the whole sequence again; with it, the prompt runs once
    and each step runs one token. Both give the same tokens (greedy), which a test checks.
    On CUDA the cached step is replayed as a CUDA graph (`fastdecode.py`; `cuda_graph=False`
    runs the plain loop below), since a tiny model's step costs launch overhead, not maths.
    """
    limit = model.max_positions()
    if limit is not None and idx.shape[1] + max_new_tokens > limit:
        # Learned positions stop at the training context: continue as nanoGPT does, each step
        # seeing only the last `limit` tokens (the cache cannot slide, since every position
        # would shift).
        if idx.shape[1] > limit:
            raise ValueError(f"a prompt of {idx.shape[1]} tokens is longer than the {limit} "
                             "positions a learned-position model has")
        fits = limit - idx.shape[1]
        if fits:
            idx = generate(model, idx, fits, temperature, top_k, use_cache, generator, cuda_graph)
        return _generate_cropped(model, idx, max_new_tokens - fits, limit, temperature, top_k,
                                 generator)
    if use_cache and cuda_graph and max_new_tokens > 0:
        from .fastdecode import graph_decode_applies, graph_generate  # it imports this file

        if graph_decode_applies(model, idx):
            return graph_generate(model, idx, max_new_tokens, temperature, top_k, generator)
    cache = model.new_cache(idx.shape[0], idx.shape[1] + max_new_tokens) if use_cache else None
    step_input = idx
    # On CUDA, SDPA may pick cuDNN attention, which plans anew for every new key length and so
    # is slow for decoding; the flash / memory-efficient kernels are not.
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(backends) if idx.is_cuda else nullcontext():
        for _ in range(max_new_tokens):
            logits, _ = model(step_input if use_cache else idx, cache=cache, last_only=True)
            nxt = sample_next(logits[:, -1, :], temperature, top_k, generator)
            idx = torch.cat([idx, nxt], dim=1)
            step_input = nxt
    return idx


def _generate_cropped(model: GPT, idx: torch.Tensor, max_new_tokens: int, window: int,
                      temperature: float, top_k: int | None,
                      generator: torch.Generator | None) -> torch.Tensor:
    """Each new token from the last `window` tokens only (no cache)."""
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -window:], last_only=True)
        nxt = sample_next(logits[:, -1, :], temperature, top_k, generator)
        idx = torch.cat([idx, nxt], dim=1)
    return idx
