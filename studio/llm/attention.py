"""Decode attention over the static KV cache as two Triton kernels (split-K, "flash decoding").

At batch 1 the matmul route (``baddbmm`` + softmax + cast + ``matmul``, plus the mask) costs
about 1 ms per token for 32 layers at 768 tokens on an H200, mostly launch latency of its small
kernels. Here: kernel 1 runs one program per (KV head, 128-key split): the n_rep query heads of
the group against that split's keys, online softmax, a partial (max, sum, weighted V); kernel 2
combines the splits. The valid length is read on the device (``pos + 1``), so one CUDA graph
per attended-length bucket stays valid for every step in it, as with the matmul route.

Needs CUDA and Triton, and a power-of-two head size >= 16; `supported` says whether it applies.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - torch CUDA wheels ship Triton
    triton = None

SPLIT = 128  # keys per program
BLOCK_N = 64  # keys per inner step


def supported(head_dim: int, device) -> bool:
    interp = __import__("os").environ.get("TRITON_INTERPRET") == "1"
    return triton is not None and (torch.device(device).type == "cuda" or interp) and \
        head_dim >= 16 and head_dim & (head_dim - 1) == 0


if triton is not None:

    @triton.jit
    def _split_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr, scale,
                      stride_kh, stride_kn, n_rep, n_splits,
                      HD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      SPLIT: tl.constexpr):
        h = tl.program_id(0)
        s = tl.program_id(1)
        length = tl.load(pos_ptr).to(tl.int32) + 1
        rows = tl.arange(0, BLOCK_M)
        dims = tl.arange(0, HD)
        q = tl.load(q_ptr + (h * n_rep + rows[:, None]) * HD + dims[None, :],
                    mask=rows[:, None] < n_rep, other=0.0)
        m = tl.full((BLOCK_M,), -1e30, tl.float32)
        lsum = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, HD), tl.float32)
        start = s * SPLIT
        end = tl.minimum(start + SPLIT, length)
        for n0 in range(start, end, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            valid = cols < end
            offs = h * stride_kh + cols[:, None] * stride_kn + dims[None, :]
            k = tl.load(k_ptr + offs, mask=valid[:, None], other=0.0)
            v = tl.load(v_ptr + offs, mask=valid[:, None], other=0.0)
            sc = tl.dot(q, tl.trans(k)) * scale
            sc = tl.where(valid[None, :], sc, -1e30)
            m_new = tl.maximum(m, tl.max(sc, 1))
            p = tl.exp(sc - m_new[:, None])
            p = tl.where(valid[None, :], p, 0.0)
            alpha = tl.exp(m - m_new)
            lsum = lsum * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m = m_new
        base = h * n_splits + s
        tl.store(m_ptr + base * BLOCK_M + rows, m)
        tl.store(l_ptr + base * BLOCK_M + rows, lsum)
        tl.store(acc_ptr + (base * BLOCK_M + rows[:, None]) * HD + dims[None, :], acc)

    @triton.jit
    def _combine_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, n_rep, n_splits,
                        HD: tl.constexpr, BLOCK_M: tl.constexpr):
        h = tl.program_id(0)
        rows = tl.arange(0, BLOCK_M)
        dims = tl.arange(0, HD)
        mx = tl.full((BLOCK_M,), -1e30, tl.float32)
        for s in range(0, n_splits):
            mx = tl.maximum(mx, tl.load(m_ptr + (h * n_splits + s) * BLOCK_M + rows))
        total = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, HD), tl.float32)
        for s in range(0, n_splits):
            base = (h * n_splits + s) * BLOCK_M
            w = tl.exp(tl.load(m_ptr + base + rows) - mx)
            total += w * tl.load(l_ptr + base + rows)
            acc += w[:, None] * tl.load(acc_ptr + (base + rows[:, None]) * HD + dims[None, :])
        out = acc / total[:, None]
        tl.store(out_ptr + (h * n_rep + rows[:, None]) * HD + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=rows[:, None] < n_rep)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     pos: torch.Tensor, attend: int) -> torch.Tensor:
    """Attention of one decode position: `q` (1, n_kv, n_rep, hd) against the cache
    (1, n_kv, max_len, hd) keys 0..pos (`pos` a 1-element device tensor; `attend` >= pos + 1
    bounds the work, static per graph). Returns (1, n_kv, n_rep, hd) in q's dtype."""
    _, n_kv, n_rep, hd = q.shape
    block_m = max(16, triton.next_power_of_2(n_rep))
    n_splits = triton.cdiv(attend, SPLIT)
    dev = q.device
    m = torch.empty((n_kv, n_splits, block_m), dtype=torch.float32, device=dev)
    lsum = torch.empty_like(m)
    acc = torch.empty((n_kv, n_splits, block_m, hd), dtype=torch.float32, device=dev)
    out = torch.empty_like(q)
    qc = q.contiguous()
    _split_kernel[(n_kv, n_splits)](
        qc, k_cache, v_cache, pos, m, lsum, acc, hd ** -0.5,
        k_cache.stride(1), k_cache.stride(2), n_rep, n_splits,
        HD=hd, BLOCK_M=block_m, BLOCK_N=BLOCK_N, SPLIT=SPLIT)
    _combine_kernel[(n_kv,)](m, lsum, acc, out, n_rep, n_splits, HD=hd, BLOCK_M=block_m)
    return out
