"""The engine's fast 4-bit decode format: int4 weight-only, asymmetric, grouped (64 by default),
run by PyTorch's own int4 kernel (tinygemm, ``torch._weight_int4pack_mm``; the CPU has
``_weight_int4pack_mm_for_cpu``), the kernel torchao's int4 weight-only and gpt-fast use.

Why this kernel: at batch 1 an 8B model's projections take 3.85 ms per token through
bitsandbytes' NF4 ``gemv_4bit`` and 2.28 ms through tinygemm on the same H100 (the committed
``bench/results/llm.json``), with no new dependency.

- `quantize` / `dequantize`: per output row, groups of ``group`` input columns, 16 levels
  between a clipped min and max; the clip ratio per group is picked by a small grid search on
  the weight error, then scale and zero are refit by least squares to the levels the weights
  fell on (a few Lloyd steps); no calibration data. 4.25 bits per weight at g128, 4.5 at g64.
- `Int4Linear`: the packed weight as buffers (the warm tier's pinned swap moves them like any
  buffer), one optional LoRA adapter applied on top inside the same forward (and so inside the
  engine's CUDA graphs).
- `quantize_model`: every ``nn.Linear`` (or bitsandbytes ``Linear4bit``: dequantized first) of a
  model's decoder layers -> `Int4Linear`, one layer at a time on the target device, so an 8B
  bf16 checkpoint held in CPU RAM converts within a 12 GB card.
- `Int8Linear`: the LM head in int8 (per-row scales; batch 1 through a Triton kernel): half
  of the bf16 head's bytes with the float head's quality, where an int4 head lost it.
- `attach_lora` / `detach_lora`: a PEFT LoRA folder (``adapter_config.json`` +
  ``adapter_model.safetensors``) applied to the int4 layers, detachable without reloading.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn as nn

log = logging.getLogger("studio.llm.int4")

FORMAT = "int4"  # the ModelSource quantization name
# What new loads use, chosen by bench/results/llm.json: group 64 keeps NF4's quality (mean KL
# vs the float weights: SmolLM2-135M 0.230 vs NF4's 0.300, random 8B 0.894 vs 0.947; group
# 128 is 0.302 / 0.961) for 3 % of speed.
GROUP = 64
# The LM head's format: "int8" (per-row symmetric int8, `Int8Linear`), "int4" (the int4 layers'
# format) or False (bf16). int4 saves 0.68 GiB on the 8B but on SmolLM2-135M lifts the mean KL
# from 0.230 to 0.408 (g64 head) / 0.338 (g32), past NF4's 0.300; int8 halves the bf16 head
# (0.49 GiB saved on the 8B) for 0.238 vs 0.234 (float head), NF4 0.312 (bench/results/llm.json,
# quality_real_checkpoint). A head tied to the embedding stays shared and unquantized.
QUANTIZE_HEAD: str | bool = "int8"
FUSE = True  # q/k/v and gate/up as one int4 matmul each (exact: groups run along the input)
# tinygemm's inner k-tiles on CUDA: 4 ran 1-2 % faster than 8 on the 8B's fused qkv, gate/up
# and down shapes (bench/llm.py linear_kernels, int4_tinygemm_g64_tiles*)
CUDA_INNER_K_TILES = 4
LEVELS = 15  # 4-bit: 0..15
CLIP_RATIOS = (1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82, 0.79, 0.76)


def head_format(head: str | bool | None) -> str | None:
    """"int4", "int8" or None (bf16) from a `quantize_model` head argument (True = int4)."""
    if head is True or head == "int4":
        return "int4"
    if head == "int8":
        return "int8"
    if head in (False, None, "bf16", "none", ""):
        return None
    raise ValueError(f"unknown LM head format {head!r}")


def format_label(group: int = GROUP, head: str | bool | None = None) -> str:
    fmt = head_format(head)
    return f"int4 g{group}{f' + {fmt} head' if fmt else ''} (tinygemm)"


def pick_group(k: int, group: int = GROUP) -> int | None:
    """The largest group size <= `group` that tinygemm accepts for `k` input features."""
    for g in (256, 128, 64, 32):
        if g <= group and k % g == 0 and inner_k_tiles(k) is not None:
            return g
    return None


def inner_k_tiles(k: int) -> int | None:
    for t in (8, 4, 2):
        if k % (t * 16) == 0:
            return t
    return None


# ----- quantize / dequantize ------------------------------------------------------------------
def _qparams(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = ((hi - lo) / LEVELS).clamp(min=1e-8)
    return scale, lo + scale * 8  # tinygemm's form: w = (q - 8) * scale + zero


@torch.no_grad()
def quantize(w: torch.Tensor, group: int = GROUP, clip_search: bool = True, refine: int = 4,
             rows_per_chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, k) float weight -> (q uint8 (n, k) in 0..15, scale (n, k/group), zero (n, k/group)),
    fp32, where w ~ (q - 8) * scale + zero. Works on whatever device `w` is on."""
    n, k = w.shape
    if k % group:
        raise ValueError(f"{k} input features are not a multiple of the group size {group}")
    qs, scales, zeros = [], [], []
    for r0 in range(0, n, rows_per_chunk):
        g = w[r0:r0 + rows_per_chunk].float().reshape(-1, k // group, group)
        lo0 = g.amin(-1, keepdim=True)
        hi0 = g.amax(-1, keepdim=True)
        best_err = best_lo = best_hi = None
        for ratio in (CLIP_RATIOS if clip_search else (1.0,)):
            lo, hi = lo0 * ratio, hi0 * ratio
            scale, zero = _qparams(lo, hi)
            q = torch.clamp(torch.round((g - lo) / scale), 0, LEVELS)
            err = ((q - 8) * scale + zero - g).pow_(2).sum(-1, keepdim=True)
            if best_err is None:
                best_err, best_lo, best_hi = err, lo, hi
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_lo = torch.where(better, lo, best_lo)
                best_hi = torch.where(better, hi, best_hi)
        scale, zero = _qparams(best_lo, best_hi)
        for _ in range(refine):  # least-squares refit of (scale, zero) to the assigned levels
            q = torch.clamp(torch.round((g - zero) / scale + 8), 0, LEVELS) - 8
            mq, mg = q.mean(-1, keepdim=True), g.mean(-1, keepdim=True)
            var = (q - mq).pow(2).sum(-1, keepdim=True)
            fit = ((q - mq) * (g - mg)).sum(-1, keepdim=True) / var.clamp(min=1e-12)
            scale = torch.where(var > 0, fit, scale).clamp(min=1e-8)
            zero = mg - scale * mq
        q = torch.clamp(torch.round((g - zero) / scale + 8), 0, LEVELS)
        qs.append(q.reshape(-1, k).to(torch.uint8))
        scales.append(scale.reshape(-1, k // group))
        zeros.append(zero.reshape(-1, k // group))
    return torch.cat(qs), torch.cat(scales), torch.cat(zeros)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
               group: int = GROUP) -> torch.Tensor:
    """The fp32 weight (n, k) that `quantize`'s output stands for."""
    n, k = q.shape
    g = q.float().reshape(n, k // group, group)
    return ((g - 8) * scale[..., None] + zero[..., None]).reshape(n, k)


def fake_quantize(w: torch.Tensor, group: int = GROUP) -> torch.Tensor:
    """`w` after a quantize/dequantize round trip (quality measurements)."""
    return dequantize(*quantize(w, group), group).to(w.dtype)


def pack(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, device,
         dtype=torch.bfloat16, tiles: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """tinygemm's layout on `device`: the packed weight and scales_and_zeros (k/g, n, 2).
    `tiles`: inner k-tiles of the layout (2, 4 or 8; default the largest that fits)."""
    device = torch.device(device)
    k = q.shape[1]
    if tiles is None and device.type == "cuda" and k % (CUDA_INNER_K_TILES * 16) == 0:
        tiles = CUDA_INNER_K_TILES
    tiles = tiles or inner_k_tiles(k)
    if tiles is None:
        raise ValueError(f"tinygemm needs the input features ({k}) to be a multiple of 32")
    q = q.to(device)
    if device.type == "cuda":
        u8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8).contiguous()
        packed = torch.ops.aten._convert_weight_to_int4pack(u8, tiles)
    else:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            q.to(torch.int32).contiguous(), tiles)
    sz = torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(device, dtype)
    return packed, sz


# ----- the layer ------------------------------------------------------------------------------
class Int4Linear(nn.Module):
    """A linear layer whose weight is int4 (tinygemm layout); optional bias and LoRA adapter."""

    def __init__(self, in_features: int, out_features: int, group: int, packed: torch.Tensor,
                 scales_and_zeros: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("bias", bias)
        self.packed_for = packed.device.type  # the layout differs between CPU and CUDA
        self.register_buffer("lora_A", None, persistent=False)  # (r, in)
        self.register_buffer("lora_B", None, persistent=False)  # (out, r), scaling folded in

    @classmethod
    @torch.no_grad()
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None, device,
                    group: int = GROUP, dtype=torch.bfloat16,
                    tiles: int | None = None) -> Int4Linear:
        """Quantize a float weight (out, in) on `device` (the rows go over in chunks)."""
        n, k = weight.shape
        g = pick_group(k, group)
        if g is None:
            raise ValueError(f"no int4 group size fits {k} input features")
        device = torch.device(device)
        dtype = dtype if device.type == "cuda" else torch.float32
        q, s, z = quantize(weight.to(device), g)
        packed, sz = pack(q, s, z, device, dtype, tiles)
        b = None if bias is None else bias.detach().to(device, dtype)
        return cls(k, n, g, packed, sz, b)

    @property
    def weight_bytes(self) -> int:
        return self.packed.numel() * self.packed.element_size() + \
            self.scales_and_zeros.numel() * self.scales_and_zeros.element_size()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group={self.group_size}, lora={self.lora_A is not None}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != self.packed_for or self.packed.device != x.device:
            raise RuntimeError(f"int4 weights packed for {self.packed_for} "
                               f"({self.packed.device}) got input on {x.device}")
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(self.scales_and_zeros.dtype)
        if self.packed_for == "cuda":
            y = torch.ops.aten._weight_int4pack_mm(x2, self.packed, self.group_size,
                                                   self.scales_and_zeros)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size,
                                                           self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        if self.lora_A is not None:
            y = y + (x2 @ self.lora_A.t()) @ self.lora_B.t()
        return y.reshape(*shape[:-1], self.out_features)


class Int4Slice(nn.Module):
    """Rows start:end of a fused `Int4Linear` (q_proj inside qkv_proj): keeps the model's own
    forward working; the engine's decoder calls the fused layer once instead."""

    def __init__(self, fused: Int4Linear, start: int, end: int):
        super().__init__()
        self._fused = [fused]  # not a submodule: the fused layer is registered once, elsewhere
        self.start, self.end = start, end
        self.in_features, self.out_features = fused.in_features, end - start

    @property
    def fused(self) -> Int4Linear:
        return self._fused[0]

    def extra_repr(self) -> str:
        return f"rows {self.start}:{self.end} of a fused int4 layer"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x)[..., self.start:self.end]


# ----- the 8-bit LM head ---------------------------------------------------------------------
from studio.llm.attention import tl, triton  # noqa: E402  (None where Triton is missing)

# the batch-1 int8 kernel's blocks: the fastest of bench/llm.py's head_kernels sweep on the
# H200 (8B head: 160 us, 3.3 TB/s; int4 g64 tinygemm 144 us, bf16 247 us)
GEMV_BLOCK_N = 8  # output rows per program
GEMV_BLOCK_K = 256
GEMV_WARPS = 4
DEQUANT_ROWS = 8192  # CUDA, several input rows: dequantize this many output rows at a time

if triton is not None:

    @triton.jit
    def _int8_gemv_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, N, K, HAS_BIAS: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            cmask = cols < K
            x = tl.load(x_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + rows[:, None].to(tl.int64) * K + cols[None, :],
                        mask=rmask[:, None] & cmask[None, :], other=0)
            acc += w.to(tl.float32) * x[None, :]
        y = tl.sum(acc, 1) * tl.load(s_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            y += tl.load(b_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rmask)


def int8_gemv(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor,
              bias: torch.Tensor | None = None, block_n: int | None = None,
              block_k: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """y = (x @ w.T) * scale (+ bias) for one row `x` (1, k) and an int8 `w` (n, k), as one
    memory-bound Triton kernel (CUDA, or the interpreter)."""
    n, k = w.shape
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    bn = block_n or GEMV_BLOCK_N
    _int8_gemv_kernel[(triton.cdiv(n, bn),)](
        x, w, scale, bias if bias is not None else scale, y, n, k, HAS_BIAS=bias is not None,
        BLOCK_N=bn, BLOCK_K=block_k or GEMV_BLOCK_K, num_warps=num_warps or GEMV_WARPS)
    return y


@torch.no_grad()
def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, k) float weight -> (int8 (n, k), fp32 scale (n,)), per-row symmetric:
    w ~ q * scale."""
    w = w.float()
    scale = (w.abs().amax(1) / 127).clamp(min=1e-8)
    q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """A linear layer with an int8 weight and one scale per output row (the engine's LM head):
    batch 1 on CUDA through `int8_gemv`, otherwise PyTorch's ``_weight_int8pack_mm``."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor,
                 bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight_int8", weight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self.use_triton = triton is not None

    @classmethod
    @torch.no_grad()
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None, device,
                    dtype=torch.bfloat16) -> Int8Linear:
        device = torch.device(device)
        dtype = dtype if device.type == "cuda" else torch.float32
        q, s = quantize_int8(weight.to(device))
        b = None if bias is None else bias.detach().to(device, dtype)
        return cls(q.contiguous(), s.to(dtype), b)

    @property
    def weight_bytes(self) -> int:
        return self.weight_int8.numel() + self.scale.numel() * self.scale.element_size()

    def dequantized(self) -> torch.Tensor:
        return self.weight_int8.float() * self.scale.float()[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(self.scale.dtype)
        if x2.shape[0] == 1 and x2.is_cuda and self.use_triton:
            y = int8_gemv(x2.contiguous(), self.weight_int8, self.scale, self.bias)
        elif x2.is_cuda:  # prefill rows (the model's own forward): a slice at a time in bf16
            # (PyTorch's CUDA int8 kernel takes 2.4 ms for the 8B head even at one row)
            parts = []
            for r0 in range(0, self.out_features, DEQUANT_ROWS):
                w = self.weight_int8[r0:r0 + DEQUANT_ROWS].to(x2.dtype) * \
                    self.scale[r0:r0 + DEQUANT_ROWS, None]
                parts.append(x2 @ w.t())
            y = torch.cat(parts, -1)
            if self.bias is not None:
                y = y + self.bias
        else:
            y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.weight_int8,
                                                   self.scale)
            if self.bias is not None:
                y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


FUSIONS = (("self_attn", "qkv_proj", ("q_proj", "k_proj", "v_proj")),
           ("mlp", "gate_up_proj", ("gate_proj", "up_proj")))


def _fuse_layer(layer: nn.Module, device, group: int, dtype) -> int:
    """Replace each fusable set of a layer's linear layers by one fused `Int4Linear` plus
    `Int4Slice` views; returns the int4 bytes made."""
    made = 0
    for holder_name, fused_name, names in FUSIONS:
        holder = getattr(layer, holder_name, None)
        mods = [getattr(holder, n, None) for n in names] if holder is not None else []
        if not mods or any(m is None or not _is_linear(m) for m in mods):
            continue
        k = mods[0].in_features
        if any(m.in_features != k for m in mods) or pick_group(k, group) is None:
            continue
        has_bias = [getattr(m, "bias", None) is not None for m in mods]
        ws, bs = [], []
        for m in mods:
            w, b = _float_weight(m, device)
            ws.append(w)
            bs.append(b.to(device) if b is not None else
                      torch.zeros(m.out_features, device=device, dtype=w.dtype))
        fused = Int4Linear.from_weight(torch.cat(ws), torch.cat(bs) if any(has_bias) else None,
                                       device, group, dtype)
        del ws, bs
        setattr(holder, fused_name, fused)
        start = 0
        for n, m in zip(names, mods, strict=True):
            setattr(holder, n, Int4Slice(fused, start, start + m.out_features))
            start += m.out_features
        made += fused.weight_bytes
    return made


# ----- whole models ---------------------------------------------------------------------------
def _float_weight(module: nn.Module, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The float weight and bias of an nn.Linear or a bitsandbytes Linear4bit, on `device`."""
    w = module.weight
    qs = getattr(w, "quant_state", None)
    bias = module.bias.detach() if getattr(module, "bias", None) is not None else None
    if qs is not None:  # bitsandbytes 4-bit: dequantize (NF4/FP4) to float first
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(w.data.to(device), qs).float(), bias
    return w.detach().to(device), bias


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Linear4bit"


@torch.no_grad()
def quantize_model(model: nn.Module, device, group: int = GROUP, head: str | bool = False,
                   dtype=torch.bfloat16, fuse: bool | None = None,
                   head_group: int | None = None) -> dict:
    """Convert the decoder layers' linear layers to `Int4Linear` on `device`, one at a time, and
    the LM head by `head` ("int4"/True, "int8": `Int8Linear` when untied, False: kept); move
    everything else to `device` in `dtype` (float32 on CPU). Returns counts and bytes."""
    from studio.llm.fast import decoder_stack

    device = torch.device(device)
    fdtype = dtype if device.type == "cuda" else torch.float32
    stack = decoder_stack(model)
    if stack is None:
        raise ValueError(f"{type(model).__name__} has no decoder stack to quantize")
    fuse = FUSE if fuse is None else fuse
    qbytes = 0
    if fuse:
        for layer in stack.layers:
            qbytes += _fuse_layer(layer, device, group, fdtype)
    targets: list[tuple[nn.Module, str, nn.Module]] = []
    for layer in stack.layers:
        for name, mod in list(layer.named_modules()):
            if _is_linear(mod) and mod.out_features % 8 == 0 and \
                    pick_group(mod.in_features, group) is not None:
                parent = layer.get_submodule(name.rsplit(".", 1)[0]) if "." in name else layer
                targets.append((parent, name.rsplit(".", 1)[-1], mod))
    head = head_format(head)
    if head == "int4" and _is_linear(model.lm_head) and model.lm_head.out_features % 8 == 0 \
            and pick_group(model.lm_head.in_features, group):
        targets.append((model, "lm_head", model.lm_head))
    for parent, attr, mod in targets:
        w, b = _float_weight(mod, device)
        g = head_group if head_group and attr == "lm_head" and parent is model else group
        new = Int4Linear.from_weight(w, b, device, g, fdtype)
        del w
        setattr(parent, attr, new)
        qbytes += new.weight_bytes
    # int8 head for an untied head only: a head tied to the embedding stays the one shared
    # tensor (an int8 copy beside the bf16 embedding would cost memory, not save it)
    if head == "int8" and _is_linear(model.lm_head) and \
            model.lm_head.weight is not stack.embed_tokens.weight:
        w, b = _float_weight(model.lm_head, device)
        model.lm_head = Int8Linear.from_weight(w, b, device, fdtype)
        del w
        qbytes += model.lm_head.weight_bytes
    # the rest (embeddings, norms, head, vision tower) in the compute dtype on the device;
    # tied parameters (a head sharing the embedding) stay one tensor
    moved: dict[int, nn.Parameter] = {}
    for mod in model.modules():
        if isinstance(mod, (Int4Linear, Int8Linear)):
            continue
        for pname, p in list(mod._parameters.items()):
            if p is not None:
                if id(p) not in moved:
                    data = p.data.to(device)
                    if data.is_floating_point():
                        data = data.to(fdtype)
                    moved[id(p)] = nn.Parameter(data, requires_grad=False)
                mod._parameters[pname] = moved[id(p)]
        for bname, buf in list(mod._buffers.items()):
            if buf is not None:
                mod._buffers[bname] = buf.to(device)  # dtype kept: RoPE's inv_freq stays fp32
        extra = getattr(mod, "original_inv_freq", None)  # a plain attribute of rotary modules
        if isinstance(extra, torch.Tensor):
            mod.original_inv_freq = extra.to(device)
    if hasattr(model, "hf_quantizer"):  # converted from bitsandbytes: no longer a bnb model
        model.hf_quantizer = None
        for attr in ("is_quantized", "is_loaded_in_4bit"):
            if hasattr(model, attr):
                try:
                    setattr(model, attr, False)
                except AttributeError:
                    pass
    if hasattr(model.config, "quantization_config"):
        try:
            del model.config.quantization_config
        except AttributeError:
            pass
    if device.type == "cuda":
        torch.cuda.empty_cache()
    lm = getattr(model, "lm_head", None)
    done = "int8" if isinstance(lm, Int8Linear) else "int4" if isinstance(lm, Int4Linear) \
        else None  # what the head became (a tied head stays as it was)
    model.studio_format = format_label(group, done)  # the ledger's label for this model
    return {"layers": len(int4_layers(model)), "int4_bytes": qbytes, "group": group,
            "head": done or "bf16", "fused": fuse}


def int4_layers(model: nn.Module) -> list[tuple[str, Int4Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Int4Linear)]


# ----- LoRA on top of the int4 base -----------------------------------------------------------
def _read_adapter(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    folder = Path(folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    st = folder / "adapter_model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        weights = load_file(str(st))
    else:
        weights = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    return cfg, weights


def attach_lora(model: nn.Module, folder: str | Path) -> int:
    """Apply a PEFT LoRA adapter to the model's `Int4Linear` layers (y += B A x * alpha/r).
    Returns the number of layers it reached; raises ValueError for what this path cannot do
    (DoRA, adapters on layers that are not int4)."""
    cfg, weights = _read_adapter(folder)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{cfg.get('peft_type')} adapters are not LoRA")
    if cfg.get("use_dora"):
        raise ValueError("DoRA adapters are not supported on the int4 base")
    r, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
    pattern_r = cfg.get("rank_pattern") or {}
    pattern_a = cfg.get("alpha_pattern") or {}
    layers: dict[str, nn.Module] = dict(int4_layers(model))
    layers.update((n, m) for n, m in model.named_modules() if isinstance(m, Int4Slice))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in weights.items():
        part = next((p for p in ("lora_A", "lora_B") if f".{p}." in key), None)
        if part is None:  # modules_to_save, embedding LoRA, DoRA magnitudes: not this path
            raise ValueError(f"adapter tensor {key} is not a LoRA A/B matrix of a linear layer")
        pairs.setdefault(key.split(f".{part}.")[0], {})[part] = t
    plan = []
    for name, ab in pairs.items():
        # PEFT saves "base_model.model.<module path>"; match the module by its path suffix
        path = name.removeprefix("base_model.model.")
        target = layers.get(path)
        if target is None:
            cands = [n for n in layers if path.endswith(n) or n.endswith(path)]
            target = layers[cands[0]] if len(cands) == 1 else None
        if target is None or "lora_A" not in ab or "lora_B" not in ab:
            raise ValueError(f"adapter layer {name} has no int4 base layer to attach to")
        short = path.rsplit(".", 1)[-1]
        rr = int(pattern_r.get(short, r))
        aa = float(pattern_a.get(short, alpha))
        scaling = aa / (rr ** 0.5 if cfg.get("use_rslora") else rr)
        plan.append((target, ab["lora_A"], ab["lora_B"].float() * scaling))
    # one (A, B) per int4 layer: a fused layer's slices stack their A's, and B is block-
    # diagonal over (its rows, their ranks), so y = B A x is each slice's own B_i A_i x
    per: dict[int, tuple[Int4Linear, list]] = {}
    for target, a, b in plan:
        fused, start = (target.fused, target.start) if isinstance(target, Int4Slice) \
            else (target, 0)
        per.setdefault(id(fused), (fused, []))[1].append((start, a.float(), b))
    detach_lora(model)
    for fused, parts in per.values():
        rank = sum(a.shape[0] for _, a, _ in parts)
        big_a = torch.cat([a for _, a, _ in parts])
        big_b = torch.zeros(fused.out_features, rank)
        col = 0
        for start, a, b in parts:
            big_b[start:start + b.shape[0], col:col + a.shape[0]] = b
            col += a.shape[0]
        dt = fused.scales_and_zeros.dtype
        fused.lora_A = big_a.to(fused.packed.device, dt).contiguous()
        fused.lora_B = big_b.to(fused.packed.device, dt).contiguous()
    return len(plan)


def detach_lora(model: nn.Module) -> None:
    for _, m in int4_layers(model):
        m.lora_A = None
        m.lora_B = None
