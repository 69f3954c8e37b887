""""Will it fit?" for a vision-language model: chatting and adapting, against the budget.

The language model is counted by the QLoRA trainer's formula (`tabs.qlora.estimate`: NF4
linears, 16-bit embeddings and head, LoRA + optimizer, activations, logits). On top:

- the vision tower and projector in bf16 (2 bytes per parameter; they are kept out of 4-bit),
  counted from the vision config: per layer 4 d^2 (attention) + 2 d m (MLP), SwiGLU 3 d m;
- the image tokens of the chosen resolution, which enter the prompt (and the training
  sequence) like text tokens: LLaVA-1.5 576 per picture, LLaVA-NeXT up to 5 x 576, Qwen2-VL /
  Qwen2.5-VL one per 28 x 28 pixels of the capped picture, Idefics3 / SmolVLM 81 per tile;
- chatting: the static KV cache of the whole context (2 x layers x KV width x 2 bytes per
  token), the vision tower's working set for one picture, and the prefill's activations;
- + 10% and 256 MiB for fragmentation and workspaces, as in the QLoRA estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tabs.qlora.estimate import (
    FRAGMENTATION,
    NF4_BITS,
    WORKSPACE,
    Arch,
    Estimate,
    arch_from_config,
    estimate,
)

# the catalogue's models, so the estimate answers before anything is downloaded
_LLAVA_TEXT = Arch(4096, 11008, 32, 32, 32, 32064)
_CLIP_L = (1024, 4096, 24, False)  # hidden, MLP width, layers, SwiGLU
KNOWN = {
    "llava-hf/llava-1.5-7b-hf": ("llava", _LLAVA_TEXT, _CLIP_L, 336, 14),
    "llava-hf/llava-v1.6-vicuna-7b-hf": ("llava_next", _LLAVA_TEXT, _CLIP_L, 336, 14),
    "Qwen/Qwen2.5-VL-7B-Instruct": ("qwen2_5_vl", Arch(3584, 18944, 28, 28, 4, 152064),
                                    (1280, 3420, 32, True), 0, 14),
    "Qwen/Qwen2.5-VL-3B-Instruct": ("qwen2_5_vl", Arch(2048, 11008, 36, 16, 2, 151936, True),
                                    (1280, 3420, 32, True), 0, 14),
    "HuggingFaceTB/SmolVLM2-2.2B-Instruct": ("smolvlm", Arch(2048, 8192, 24, 32, 32, 49280),
                                             (1152, 4304, 27, False), 384, 14),
}


@dataclass(frozen=True)
class VLMArch:
    """What the estimate needs from a VLM's config."""

    model_type: str
    text: Arch
    vision_hidden: int
    vision_mlp: int
    vision_layers: int
    vision_swiglu: bool
    image_size: int  # fixed-resolution models; 0 for dynamic resolution
    patch: int

    @property
    def vision_params(self) -> int:
        d, m = self.vision_hidden, self.vision_mlp
        per_layer = 4 * d * d + (3 if self.vision_swiglu else 2) * d * m
        projector = 2 * d * self.text.hidden + self.text.hidden ** 2
        return self.vision_layers * per_layer + projector

    def image_tokens(self, max_pixels: int | None = None) -> int:
        """Prompt tokens of one picture at the chosen resolution (the largest case)."""
        if self.model_type in ("qwen2_vl", "qwen2_5_vl"):
            return max(4, (max_pixels or 1024 * 1024) // (2 * self.patch) ** 2)
        grid = (self.image_size // self.patch) ** 2
        if self.model_type == "llava_next":
            return 5 * grid
        if self.model_type in ("idefics3", "smolvlm"):
            return 81 * 5
        return grid


def load_vlm_arch(source: str) -> VLMArch:
    """The shape of a VLM: the catalogue offline, else its config (local or HF cache)."""
    if source in KNOWN:
        kind, text, (d, m, n, swiglu), size, patch = KNOWN[source]
        return VLMArch(kind, text, d, m, n, swiglu, size, patch)
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot read the model config of {source}: {e}") from e
    v = getattr(cfg, "vision_config", None)
    if v is None:
        raise ValueError(f"{source} has no vision config: not a vision-language model")
    d = int(getattr(v, "hidden_size", 0) or getattr(v, "embed_dim", 0))
    if cfg.model_type == "qwen2_vl":
        d = int(getattr(v, "embed_dim", d))
    m = int(getattr(v, "intermediate_size", 0) or d * int(getattr(v, "mlp_ratio", 4)))
    n = int(getattr(v, "num_hidden_layers", 0) or getattr(v, "depth", 0))
    return VLMArch(cfg.model_type, arch_from_config(cfg.get_text_config()), d, m, n,
                   cfg.model_type == "qwen2_5_vl", int(getattr(v, "image_size", 0) or 0)
                   if cfg.model_type not in ("qwen2_vl", "qwen2_5_vl") else 0,
                   int(getattr(v, "patch_size", 14)))


def chat_estimate(arch: VLMArch, *, context: int, max_pixels: int | None, pictures: int = 1,
                  four_bit: bool = True, budget: int = 0) -> Estimate:
    """Peak VRAM of a chat turn: weights, the static KV cache, one picture's vision work and
    the prefill of `pictures` pictures plus text."""
    t = arch.text
    linear = t.linear_params()
    lm = int(linear * NF4_BITS / 8) if four_bit else linear * 2
    lm += t.vocab * t.hidden * 2 * (1 if t.tied else 2)
    vision = arch.vision_params * 2
    kv = 2 * t.layers * t.kv_width * 2 * context
    img = arch.image_tokens(max_pixels)
    patches = img * 4 if arch.model_type in ("qwen2_vl", "qwen2_5_vl") else img
    vision_work = 2 * patches * (6 * arch.vision_hidden + 2 * arch.vision_mlp)
    prompt = img * pictures + 256
    prefill = 2 * prompt * (12 * t.hidden + 4 * t.kv_width + 5 * t.intermediate) + \
        t.vocab * 4 * 2
    parts = {"language model": lm, "vision tower + projector (bf16)": vision,
             "KV cache": kv, "picture and prefill work": vision_work + prefill}
    parts["overhead"] = int(sum(parts.values()) * FRAGMENTATION) + WORKSPACE
    return Estimate(parts=parts, budget=budget, lora_params=0,
                    features=[f"{img} image tokens per picture, {context}-token context"])


def adapt_estimate(arch: VLMArch, cfg: Any, cuda: bool, budget: int) -> Estimate:
    """Peak VRAM of an adapt run: the QLoRA formula on the language model with the image
    tokens inside the sequence, plus the frozen bf16 vision tower (and the projector's
    trainable copy, gradients and AdamW state when it is trained)."""
    targets = cfg.target_list() or "all-linear"
    est = estimate(arch.text, seq_len=cfg.max_seq_length, micro_batch=cfg.micro_batch_size,
                   rank=cfg.lora_r, targets=targets, checkpointing=cfg.gradient_checkpointing,
                   four_bit=cuda and cfg.quantization == "nf4", paged_8bit=False,
                   budget=budget, suggest=False)
    parts = dict(est.parts)
    overhead = parts.pop("overhead")
    parts["vision tower + projector (bf16, frozen)"] = arch.vision_params * 2
    if cfg.train_projector:
        proj = 2 * arch.vision_hidden * arch.text.hidden + arch.text.hidden ** 2
        parts["projector copy + grads + AdamW"] = proj * (2 + 4 + 8)
    parts["overhead"] = overhead + int(parts["vision tower + projector (bf16, frozen)"]
                                       * FRAGMENTATION)
    out = Estimate(parts=parts, budget=budget, lora_params=est.lora_params,
                   features=[f"{arch.image_tokens(cfg.max_pixels or None)} image tokens per "
                             f"picture inside the {cfg.max_seq_length}-token sequence"])
    if budget and not out.fits:
        out.suggestions = ["lower max length or the picture cap", "micro-batch 1",
                           "gradient checkpointing on", "a smaller base (Qwen2.5-VL-3B, "
                           "SmolVLM2-2.2B)"]
    return out
