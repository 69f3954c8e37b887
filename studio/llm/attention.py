"""Decode attention over the static KV cache as two Triton kernels (split-K, "flash decoding").

Kernel 1 runs one program per (KV head, split of the cache): the n_rep query heads of the GQA
group against that split's keys (each K/V block is read once for all of them), online softmax,
a partial (max, sum, weighted V) per query head. Kernel 2 combines the splits, one program per
query head, all splits of it at once. The valid length is read on the device (``pos + 1``), so
one CUDA graph per attended-length bucket stays valid for every step in it.

`fused_decode_attention` also does the work around it that would otherwise be three more
launches per layer: RoPE of the step's q and k (from the projection's output) and the write of
the new k and v into the cache; the program whose split holds the new position writes them and
uses the fresh values from registers, so no program reads a cache row another one writes.

The split size comes from `plan` (more, smaller splits at long context so the grid fills the
GPU; measured per attended length by ``bench/llm.py``, ``decode_attention_kernels``).

Needs CUDA and Triton (or Triton's CPU interpreter), and a power-of-two head size >= 16;
`supported` says whether it applies.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - torch CUDA wheels ship Triton
    triton = tl = None

BLOCK_N = 64  # keys per inner step
# split-size policy (see `plan`): aim for about this many programs over the KV heads, with
# splits of MIN_SPLIT..MAX_SPLIT keys (powers of two)
TARGET_PROGRAMS = 256
MIN_SPLIT = 64
MAX_SPLIT = 512
COMBINE_CHUNK = 32  # splits the combine kernel reads per inner step
NUM_WARPS = 4


def supported(head_dim: int, device) -> bool:
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    return triton is not None and (torch.device(device).type == "cuda" or interp) and \
        head_dim >= 16 and head_dim & (head_dim - 1) == 0


def plan(attend: int, n_kv: int, target: int | None = None, min_split: int | None = None,
         max_split: int | None = None) -> int:
    """Keys per split for `attend` attended tokens over `n_kv` KV heads: the power of two
    that gives about `target` programs, within [min_split, max_split]."""
    target = target or TARGET_PROGRAMS
    lo, hi = min_split or MIN_SPLIT, max_split or MAX_SPLIT
    want = max(1, -(-attend * n_kv // target))
    split = lo
    while split < want and split < hi:
        split *= 2
    return split


if triton is not None:

    @triton.jit
    def _split_kernel(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, pos_ptr,
                      m_ptr, l_ptr, acc_ptr, scale, stride_kh, stride_kn, n_rep, n_splits,
                      HD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      SPLIT: tl.constexpr, FUSED: tl.constexpr):
        h = tl.program_id(0)
        s = tl.program_id(1)
        p = tl.load(pos_ptr).to(tl.int32)
        length = p + 1
        rows = tl.arange(0, BLOCK_M)
        dims = tl.arange(0, HD)
        rmask = rows[:, None] < n_rep
        qoff = (h * n_rep + rows[:, None]) * HD
        q = tl.load(q_ptr + qoff + dims[None, :], mask=rmask, other=0.0)
        if FUSED:
            # RoPE: x * cos + roll(x, HD/2) * sin_signed, in fp32; q and k from the projection
            rot = (dims + HD // 2) % HD
            cos = tl.load(cos_ptr + dims).to(tl.float32)
            sin = tl.load(sin_ptr + dims).to(tl.float32)
            q_r = tl.load(q_ptr + qoff + rot[None, :], mask=rmask, other=0.0)
            q = (q.to(tl.float32) * cos[None, :] + q_r.to(tl.float32) * sin[None, :])
            q = q.to(kc_ptr.dtype.element_ty)
            k_new = tl.load(k_ptr + h * HD + dims).to(tl.float32)
            k_new = k_new * cos + tl.load(k_ptr + h * HD + rot).to(tl.float32) * sin
            k_new = k_new.to(kc_ptr.dtype.element_ty)
            v_new = tl.load(v_ptr + h * HD + dims).to(kc_ptr.dtype.element_ty)
            if s == p // SPLIT:  # the program that holds the new position writes it
                tl.store(kc_ptr + h * stride_kh + p * stride_kn + dims, k_new)
                tl.store(vc_ptr + h * stride_kh + p * stride_kn + dims, v_new)
        m = tl.full((BLOCK_M,), -1e30, tl.float32)
        lsum = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, HD), tl.float32)
        start = s * SPLIT
        end = tl.minimum(start + SPLIT, length)
        for n0 in range(start, end, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            valid = cols < end
            offs = h * stride_kh + cols[:, None] * stride_kn + dims[None, :]
            k = tl.load(kc_ptr + offs, mask=valid[:, None], other=0.0)
            v = tl.load(vc_ptr + offs, mask=valid[:, None], other=0.0)
            if FUSED:
                fresh = (cols == p)[:, None]
                k = tl.where(fresh, k_new[None, :], k)
                v = tl.where(fresh, v_new[None, :], v)
            sc = tl.dot(q, tl.trans(k)) * scale
            sc = tl.where(valid[None, :], sc, -1e30)
            m_new = tl.maximum(m, tl.max(sc, 1))
            pr = tl.exp(sc - m_new[:, None])
            pr = tl.where(valid[None, :], pr, 0.0)
            alpha = tl.exp(m - m_new)
            lsum = lsum * alpha + tl.sum(pr, 1)
            acc = acc * alpha[:, None] + tl.dot(pr.to(v.dtype), v)
            m = m_new
        # partials of the n_rep real rows only: (n_kv, n_splits, n_rep[, HD])
        base = (h * n_splits + s) * n_rep
        rm = rows < n_rep
        tl.store(m_ptr + base + rows, m, mask=rm)
        tl.store(l_ptr + base + rows, lsum, mask=rm)
        tl.store(acc_ptr + (base + rows[:, None]) * HD + dims[None, :], acc, mask=rmask)

    @triton.jit
    def _combine_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, pos_ptr, n_rep, n_splits,
                        HD: tl.constexpr, SPLIT: tl.constexpr, CHUNK: tl.constexpr):
        """One program per query head (h * n_rep + r): all its splits, CHUNK at a time."""
        hr = tl.program_id(0)
        h = hr // n_rep
        r = hr % n_rep
        length = tl.load(pos_ptr).to(tl.int32) + 1
        n_valid = tl.minimum((length + SPLIT - 1) // SPLIT, n_splits)
        dims = tl.arange(0, HD)
        sidx = tl.arange(0, CHUNK)
        mx = tl.full((CHUNK,), -1e30, tl.float32)
        for c0 in range(0, n_valid, CHUNK):
            sp = c0 + sidx
            mx = tl.maximum(mx, tl.load(m_ptr + (h * n_splits + sp) * n_rep + r,
                                        mask=sp < n_valid, other=-1e30))
        top = tl.max(mx, 0)
        total = tl.zeros((CHUNK,), tl.float32)
        acc = tl.zeros((HD,), tl.float32)
        for c0 in range(0, n_valid, CHUNK):
            sp = c0 + sidx
            ok = sp < n_valid
            row = (h * n_splits + sp) * n_rep + r
            w = tl.where(ok, tl.exp(tl.load(m_ptr + row, mask=ok, other=-1e30) - top), 0.0)
            total += w * tl.load(l_ptr + row, mask=ok, other=0.0)
            part = tl.load(acc_ptr + row[:, None] * HD + dims[None, :], mask=ok[:, None],
                           other=0.0)
            acc += tl.sum(w[:, None] * part, 0)
        out = acc / tl.sum(total, 0)
        tl.store(out_ptr + hr * HD + dims, out.to(out_ptr.dtype.element_ty))


def _launch(q, k, v, cos, sin, k_cache, v_cache, pos, attend, fused, split, num_warps):
    n_kv, hd = k_cache.shape[1], k_cache.shape[3]
    n_rep = q.numel() // (n_kv * hd)
    split = split or plan(attend, n_kv)
    block_m = max(16, triton.next_power_of_2(n_rep))
    n_splits = triton.cdiv(attend, split)
    dev = q.device
    m = torch.empty((n_kv, n_splits, n_rep), dtype=torch.float32, device=dev)
    lsum = torch.empty_like(m)
    acc = torch.empty((n_kv, n_splits, n_rep, hd), dtype=torch.float32, device=dev)
    out = torch.empty((1, n_kv, n_rep, hd), dtype=k_cache.dtype, device=dev)
    _split_kernel[(n_kv, n_splits)](
        q, k, v, cos, sin, k_cache, v_cache, pos, m, lsum, acc, hd ** -0.5,
        k_cache.stride(1), k_cache.stride(2), n_rep, n_splits,
        HD=hd, BLOCK_M=block_m, BLOCK_N=min(BLOCK_N, split), SPLIT=split, FUSED=fused,
        num_warps=num_warps or NUM_WARPS)
    _combine_kernel[(n_kv * n_rep,)](m, lsum, acc, out, pos, n_rep, n_splits, HD=hd,
                                     SPLIT=split, CHUNK=COMBINE_CHUNK)
    return out


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     pos: torch.Tensor, attend: int, split: int | None = None,
                     num_warps: int | None = None) -> torch.Tensor:
    """Attention of one decode position: `q` (1, n_kv, n_rep, hd) against the cache
    (1, n_kv, max_len, hd) keys 0..pos (`pos` a 1-element device tensor; `attend` >= pos + 1
    bounds the work, static per graph). Returns (1, n_kv, n_rep, hd) in the cache's dtype."""
    qc = q.contiguous()
    return _launch(qc, qc, qc, qc, qc, k_cache, v_cache, pos, attend, False, split, num_warps)


def fused_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           cos: torch.Tensor, sin_signed: torch.Tensor, k_cache: torch.Tensor,
                           v_cache: torch.Tensor, pos: torch.Tensor, attend: int,
                           split: int | None = None, num_warps: int | None = None
                           ) -> torch.Tensor:
    """RoPE + cache write + attention of one decode position, in two launches. `q`, `k`, `v`:
    the step's projections before RoPE ((..., n_heads*hd), (..., n_kv*hd) twice; views into one
    fused qkv output are fine as long as each is contiguous); `cos`, `sin_signed`: (hd,) RoPE
    factors of the step's position (sin with its first half negated). Writes k (after RoPE)
    and v at `pos` into the caches; returns (1, n_kv, n_rep, hd) in the cache's dtype."""
    hd = k_cache.shape[3]
    parts = [t if t.is_contiguous() else t.contiguous() for t in (q, k, v)]
    cs = [t.reshape(-1)[-hd:] for t in (cos, sin_signed)]
    cs = [t if t.is_contiguous() else t.contiguous() for t in cs]
    return _launch(*parts, *cs, k_cache, v_cache, pos, attend, True, split, num_warps)
