""""Will it fit?": a peak-VRAM estimate for a QLoRA run, against the studio's budget.

The formula is deliberately simple and documented, so a user can follow it and the GPU bench can
check it against measured peaks (``bench/qlora.py`` writes both):

- base weights: linear layers in NF4 with double quantization = 4.127 bits per weight; the
  embeddings and the LM head stay in 16-bit (2 bytes each); without 4-bit, all 2 bytes.
- LoRA: r * (in + out) parameters per adapted linear layer; each costs 4 bytes (fp32 weight)
  + 4 (grad) + optimizer state (2 for paged 8-bit AdamW, 8 for fp32 AdamW).
- activations: tokens = micro-batch x sequence. One decoder layer's working set per token is
  2 bytes x (12 h + 4 kv + 5 i) (h hidden, kv key/value width, i MLP width, SDPA attention,
  no seq^2 term). With gradient checkpointing only each layer's input is kept (2 h bytes per
  layer) plus one layer's working set; without, every layer keeps its whole working set.
- logits: tokens x vocabulary x 14 bytes (16-bit logits, the fp32 copy the loss makes, its
  softmax and its gradient): at 128k vocabulary this is the biggest single term. With the fused
  linear cross-entropy (Liger Kernel) the logits are never whole: what stays is the gradient of
  the last hidden states (2 h bytes per token) and one chunk of fp32 logits and their gradient.
- offloaded activations: the checkpointed layer inputs live in pinned CPU RAM, so only the
  layer being recomputed and its neighbour's input stay on the card.
- + 10% and 256 MiB for the allocator's fragmentation and CUDA workspaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.config import format_bytes

NF4_BITS = 4.127
LOGIT_BYTES = 14
WORKSPACE = 256 * 1024**2
FRAGMENTATION = 0.10


@dataclass(frozen=True)
class Arch:
    """The shape numbers the estimate needs from a decoder-only model's config."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False

    @property
    def kv_width(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer in one decoder block."""
        h, kv, i = self.hidden, self.kv_width, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())


LLAMA31_8B = Arch(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8,
                  vocab=128256)
KNOWN_ARCHS = {  # offline fallbacks, so "will it fit?" answers before anything is downloaded
    "meta-llama/Llama-3.1-8B-Instruct": LLAMA31_8B,
    "meta-llama/Llama-3.1-8B": LLAMA31_8B,
    "meta-llama/Meta-Llama-3.1-8B-Instruct": LLAMA31_8B,
    "Qwen/Qwen2.5-7B-Instruct": Arch(3584, 18944, 28, 28, 4, 152064),
    "mistralai/Mistral-7B-Instruct-v0.3": Arch(4096, 14336, 32, 32, 8, 32768),
}


def arch_from_config(cfg: Any) -> Arch:
    """From a transformers PretrainedConfig (or anything with the same attributes)."""
    heads = int(cfg.num_attention_heads)
    return Arch(hidden=int(cfg.hidden_size), intermediate=int(cfg.intermediate_size),
                layers=int(cfg.num_hidden_layers), heads=heads,
                kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
                vocab=int(cfg.vocab_size), tied=bool(getattr(cfg, "tie_word_embeddings", False)))


def load_arch(source: str, gguf_file: str = "") -> Arch:
    """The base model's shape: known hub ids offline, else its config (local or HF cache)."""
    if source in KNOWN_ARCHS:
        return KNOWN_ARCHS[source]
    from transformers import AutoConfig

    where, gguf = source, gguf_file or None
    p = Path(source).expanduser()
    if p.is_file() and p.suffix.lower() == ".gguf":
        where, gguf = str(p.parent), p.name
    elif p.is_dir() and not (p / "config.json").is_file() and not gguf:
        ggufs = sorted(p.glob("*.gguf"))
        gguf = ggufs[0].name if ggufs else None
    try:
        cfg = AutoConfig.from_pretrained(where, **({"gguf_file": gguf} if gguf else {}))
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot read the model config of {source}: {e}") from e
    return arch_from_config(cfg)


@dataclass
class Estimate:
    """Estimated peak VRAM, its parts, the budget and what to change when it won't fit."""

    parts: dict[str, int]
    budget: int
    lora_params: int
    suggestions: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def describe(self) -> str:
        verdict = "fits" if self.fits else "does NOT fit"
        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in self.parts.items())
        text = (f"Estimated peak {format_bytes(self.total)} vs budget "
                f"{format_bytes(self.budget)}: {verdict}. ({parts}; "
                f"{self.lora_params / 1e6:.1f}M LoRA parameters)")
        if self.features:
            text += "\nWith: " + ", ".join(self.features)
        if self.suggestions:
            text += "\nTo make it fit: " + "; ".join(self.suggestions)
        return text


def lora_param_count(arch: Arch, rank: int, targets: str | list[str]) -> int:
    shapes = arch.linear_shapes()
    names = list(shapes) if targets == "all-linear" else [t for t in targets if t in shapes]
    return arch.layers * sum(rank * (shapes[n][0] + shapes[n][1]) for n in names)


def fused_ce_chunk(tokens: int, arch: Arch) -> int:
    """Tokens per chunk of Liger's fused linear cross-entropy (its own rule: about
    tokens / ceil(vocab / hidden), rounded up to a power of two)."""
    per = -(-tokens // max(1, -(-arch.vocab // arch.hidden)))
    return 1 << max(0, (per - 1).bit_length())


def estimate(arch: Arch, *, seq_len: int, micro_batch: int, rank: int,
             targets: str | list[str] = "all-linear", checkpointing: bool = True,
             four_bit: bool = True, paged_8bit: bool = True, fused_ce: bool = False,
             offload: bool = False, budget: int = 0, suggest: bool = True) -> Estimate:
    """Peak VRAM by the formula in the module docstring."""
    head = 0 if arch.tied else arch.vocab * arch.hidden * 2
    embed = arch.vocab * arch.hidden * 2
    linear = arch.linear_params()
    weights = int(linear * NF4_BITS / 8) if four_bit else linear * 2
    n_lora = lora_param_count(arch, rank, targets)
    lora = n_lora * (4 + 4 + (2 if paged_8bit else 8))
    tokens = seq_len * micro_batch
    h, kv, i = arch.hidden, arch.kv_width, arch.intermediate
    layer_work = 2 * (12 * h + 4 * kv + 5 * i) * tokens
    kept = 2 * (2 * h * tokens) if offload else arch.layers * 2 * h * tokens
    acts = (kept + layer_work) if checkpointing else \
        (2 * layer_work if offload else arch.layers * layer_work)
    if fused_ce:
        logits = tokens * h * 2 + fused_ce_chunk(tokens, arch) * arch.vocab * 8
    else:
        logits = tokens * arch.vocab * LOGIT_BYTES
    parts = {"weights": weights + embed + head, "LoRA + optimizer": lora,
             "activations": acts, "logits": logits}
    subtotal = sum(parts.values())
    parts["overhead"] = int(subtotal * FRAGMENTATION) + WORKSPACE
    est = Estimate(parts=parts, budget=budget, lora_params=n_lora,
                   features=(["fused cross-entropy (no full logits)"] if fused_ce else [])
                   + (["activations offloaded to CPU RAM"] if offload else []))
    if suggest and budget and not est.fits:
        kw = dict(seq_len=seq_len, micro_batch=micro_batch, rank=rank, targets=targets,
                  checkpointing=checkpointing, four_bit=four_bit, paged_8bit=paged_8bit,
                  fused_ce=fused_ce, offload=offload)
        est.suggestions = suggestions(arch, kw, budget)
    return est


def suggestions(arch: Arch, kw: dict[str, Any], budget: int) -> list[str]:
    """Single changes that bring the estimate under the budget, cheapest in quality first."""
    out = []

    def fits(**change: Any) -> Estimate | None:
        e = estimate(arch, **{**kw, **change}, budget=budget, suggest=False)
        return e if e.fits else None

    if not kw["checkpointing"] and (e := fits(checkpointing=True)):
        out.append(f"turn gradient checkpointing on ({format_bytes(e.total)})")
    if not kw["offload"] and (e := fits(offload=True)):
        out.append(f"offload activations to CPU ({format_bytes(e.total)})")
    if not kw["four_bit"] and (e := fits(four_bit=True)):
        out.append(f"load the base in 4-bit NF4 ({format_bytes(e.total)})")
    if kw["micro_batch"] > 1 and (e := fits(micro_batch=1)):
        out.append(f"micro-batch 1 with more gradient accumulation ({format_bytes(e.total)})")
    seq = kw["seq_len"]
    while seq > 128:
        seq //= 2
        if e := fits(seq_len=seq):
            out.append(f"max sequence length {seq} ({format_bytes(e.total)})")
            break
    if kw["rank"] > 8 and (e := fits(rank=8)):
        out.append(f"LoRA rank 8 ({format_bytes(e.total)})")
    if not out:
        out.append("no single change is enough: use a smaller base model")
    return out


def longest_fitting_seq(arch: Arch, budget: int, **kw: Any) -> int:
    """The longest sequence (multiple of 128) the estimate says fits, 0 if none."""
    lo, hi = 0, 131072 // 128
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(arch, seq_len=mid * 128, budget=budget, suggest=False, **kw).fits:
            lo = mid
        else:
            hi = mid - 1
    return lo * 128


def fused_kernels_usable(cfg: Any, cuda: bool) -> bool:
    """Liger Kernel runs Triton kernels: CUDA only, and only when it is installed."""
    import importlib.util

    return cuda and cfg.fused_kernels == "auto" and \
        importlib.util.find_spec("liger_kernel") is not None


def optimizer_name(cfg: Any, cuda: bool, offload: bool) -> str:
    """The transformers optim a run uses: 'auto' is fused AdamW on CUDA (one kernel for all
    LoRA tensors; 8 bytes of state per parameter, affordable for LoRA), paged 8-bit AdamW when
    activations are offloaded (memory is what matters then), plain AdamW on the CPU."""
    if cfg.optimizer != "auto":
        return cfg.optimizer
    if not cuda:
        return "adamw_torch"
    return "paged_adamw_8bit" if offload else "adamw_torch_fused"


def config_kwargs(cfg: Any, cuda: bool) -> dict[str, Any]:
    """estimate() arguments for a QLoRAConfig as it will run on this machine (offload as set;
    'auto' counts as off here, see resolve_offload)."""
    return dict(seq_len=cfg.max_seq_length, micro_batch=cfg.micro_batch_size, rank=cfg.lora_r,
                targets=cfg.target_list(), checkpointing=cfg.gradient_checkpointing,
                four_bit=cuda and cfg.quantization == "nf4",
                paged_8bit=cuda and "8bit" in optimizer_name(cfg, cuda, False),
                fused_ce=fused_kernels_usable(cfg, cuda),
                offload=cuda and cfg.offload_activations == "on")


def resolve_offload(cfg: Any, arch: Arch, budget: int, cuda: bool) -> bool:
    """Offload activations? 'on'/'off' as set; 'auto': only when the run would not fit the
    budget without it (offloading costs PCIe copies, so it is not free)."""
    if not cuda or cfg.offload_activations == "off":
        return False
    if cfg.offload_activations == "on":
        return True
    kw = config_kwargs(cfg, cuda)
    return not estimate(arch, **{**kw, "offload": False}, budget=budget, suggest=False).fits


def estimate_for_config(cfg: Any, arch: Arch, budget: int, cuda: bool) -> Estimate:
    """The estimate for a QLoRAConfig as it will run on this machine."""
    kw = config_kwargs(cfg, cuda)
    kw["offload"] = resolve_offload(cfg, arch, budget, cuda)
    kw["paged_8bit"] = cuda and "8bit" in optimizer_name(cfg, cuda, kw["offload"])
    return estimate(arch, **kw, budget=budget, suggest=True)


