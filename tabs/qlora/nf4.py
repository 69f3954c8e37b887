"""The 4-bit base layers inside compiled blocks: bitsandbytes' NF4 storage, dequantized by
ordinary torch ops that Inductor fuses into the block's own kernels.

Why: on a fast card a QLoRA step at batch 1 is launch-bound. Every 4-bit linear goes through
bitsandbytes' Python dispatch (its ``gemm_4bit`` op, then the double-quant absmax, then the
NF4 kernel, then the matmul), about 0.2 ms of CPU per call, and an 8B model makes 672 such calls
per step (7 linears x 32 layers x forward, recompute and backward). Inside ``torch.compile`` the
same arithmetic is one generated kernel per weight plus the matmul.

Nothing changes in storage: the weights stay bitsandbytes ``Params4bit`` (loading, saving, the
adapter, eager evaluation and generation use bitsandbytes itself). Only code that is being
compiled takes this path, and it computes bit for bit what bitsandbytes' kernel computes:
``bf16(nf4[q] * absmax)``, with the double-quantized absmax ``code2[a] * absmax2 + offset`` in
float32 (tested against bitsandbytes on CPU, and on CUDA in the GPU tests).
"""

from __future__ import annotations

from typing import Any

import torch


def dequantize_nf4(packed: torch.Tensor, absmax: torch.Tensor, absmax2: torch.Tensor | None,
                   code2: torch.Tensor | None, offset: torch.Tensor | None, code: torch.Tensor,
                   shape: tuple[int, int], blocksize: int, dtype: torch.dtype) -> torch.Tensor:
    """The (out, in) weight from bitsandbytes' 4-bit storage.

    packed: the uint8 bytes, two 4-bit indices each (high nibble first); absmax: one scale per
    `blocksize` values, float32, or uint8 codes into `code2` scaled per 256 blocks by `absmax2`
    plus `offset` when double-quantized; code: the 16 NF4 values.
    """
    if absmax2 is not None:
        blocks = torch.arange(absmax.numel(), device=absmax.device) // 256
        absmax = code2[absmax.long()] * absmax2[blocks] + offset
    high = code[(packed >> 4).long()]
    low = code[(packed & 15).long()]
    values = torch.stack((high, low), dim=-1).reshape(-1, blocksize)
    return (values * absmax.reshape(-1, 1)).to(dtype).reshape(shape)


class _NF4Linear(torch.autograd.Function):
    """x @ W.T with W dequantized in the forward and again in the backward (never stored),
    as bitsandbytes' own MatMul4Bit does; the frozen base gets no gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor,
                absmax2: torch.Tensor | None, code2: torch.Tensor | None,
                offset: torch.Tensor | None, code: torch.Tensor, meta: tuple) -> torch.Tensor:
        weight = dequantize_nf4(packed, absmax, absmax2, code2, offset, code, *meta)
        ctx.save_for_backward(packed, absmax, absmax2, code2, offset, code)
        ctx.meta = meta
        return torch.nn.functional.linear(x, weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        weight = dequantize_nf4(*ctx.saved_tensors, *ctx.meta)
        return grad @ weight, None, None, None, None, None, None, None


def nf4_linear(module: Any, x: torch.Tensor) -> torch.Tensor:
    """What bitsandbytes' Linear4bit.forward returns, through the compilable path."""
    meta = module._nf4_meta
    inp_dtype = x.dtype
    x = x.to(meta[2])
    out = _NF4Linear.apply(x, module._nf4_packed, module._nf4_absmax, module._nf4_absmax2,
                           module._nf4_code2, module._nf4_offset, module._nf4_code, meta)
    if module.bias is not None:
        out = out + module.bias.to(meta[2])
    return out.to(inp_dtype)


def compiled_nf4(model: Any) -> int:
    """Give every bitsandbytes 4-bit linear of `model` the compilable path (used only while
    ``torch.compile`` traces; eager calls keep bitsandbytes' forward). Returns how many."""
    import bitsandbytes as bnb

    fast_cls: dict[type, type] = {}
    count = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit) or getattr(module, "_nf4_meta", None):
            continue
        qs = getattr(module.weight, "quant_state", None)
        if qs is None or qs.quant_type != "nf4" or len(qs.shape) != 2:  # FP4: bitsandbytes
            continue
        nested = bool(qs.nested)
        if nested and qs.state2.blocksize != 256:
            continue
        dtype = module.compute_dtype or qs.dtype
        # views of the existing storage, registered so torch.compile sees them as inputs
        tensors = {
            "packed": module.weight.data.view(torch.uint8).reshape(-1),
            "absmax": qs.absmax,
            "absmax2": qs.state2.absmax if nested else None,
            "code2": qs.state2.code if nested else None,
            "offset": qs.offset if nested else None,
            "code": qs.code.to(module.weight.device),
        }
        for name, t in tensors.items():
            module.register_buffer(f"_nf4_{name}", t, persistent=False)
        module._nf4_meta = (tuple(qs.shape), qs.blocksize, dtype)
        cls = type(module)
        if cls not in fast_cls:
            fast_cls[cls] = type(f"Compiled{cls.__name__}", (cls,), {"forward": _forward})
        module.__class__ = fast_cls[cls]
        count += 1
    return count


def _forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return nf4_linear(self, x)
    return super(type(self), self).forward(x, *args, **kwargs)
