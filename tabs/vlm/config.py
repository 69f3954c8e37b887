"""VLMAdaptConfig: everything one adapt run of a vision-language model needs, in one typed
object. LoRA goes on the language model only; the vision tower stays frozen and the projector
is trained only when asked. The training-loop fields share their names (and meaning) with
`tabs.qlora.config.QLoRAConfig`, so the QLoRA trainer's arguments and callbacks are reused."""

from __future__ import annotations

from dataclasses import dataclass

from studio.jobconfig import JobConfig
from studio.jobconfig import setting as _f

QUANTIZATIONS = ("nf4", "none")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULES = ("cosine", "linear", "constant_with_warmup")


@dataclass
class VLMAdaptConfig(JobConfig):
    """One adapt run: base VLM, data zip, LoRA shape, optimizer and reporting cadence."""

    NAME = "VLM adapt"

    base_model: str = _f("", "Base VLM", "hub id or local folder (LLaVA, Qwen2-VL/2.5-VL, ...)")
    train_file: str = _f("", "Data (zip)", "images + a JSONL of conversations with <image> "
                         "markers and an images list, or an image,caption CSV")
    eval_fraction: float = _f(0.1, "Eval share", "pairs held out for eval loss and samples")
    skip_bad_records: bool = _f(False, "Skip bad lines", "off: any bad line stops the run")
    max_seq_length: int = _f(1024, "Max length (tokens, image tokens included)",
                             "longer examples are skipped: image tokens cannot be cut")
    max_pixels: int = _f(0, "Picture cap (pixels)", "dynamic-resolution models: 0 = the "
                         "processor's default")
    quantization: str = _f("nf4", "Language model weights", "4-bit NF4 + double quant on "
                           "CUDA (QLoRA); CPU always trains plain LoRA", choices=QUANTIZATIONS)
    precision: str = _f("auto", "Compute precision", choices=PRECISIONS)
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha")
    lora_dropout: float = _f(0.05, "LoRA dropout")
    target_modules: str = _f("all-linear", "Target modules (language model)",
                             "'all-linear' or a comma list, e.g. q_proj,v_proj")
    train_projector: bool = _f(False, "Train the projector too", "a full trainable copy of "
                               "the vision-to-language projector, saved with the adapter")
    gradient_checkpointing: bool = _f(True, "Gradient checkpointing")
    micro_batch_size: int = _f(1, "Micro-batch")
    grad_accumulation: int = _f(8, "Gradient accumulation")
    learning_rate: float = _f(2e-4, "Learning rate")
    schedule: str = _f("cosine", "Schedule", choices=SCHEDULES)
    warmup_steps: int = _f(5, "Warmup steps")
    epochs: float = _f(1.0, "Epochs", "used when max steps is 0")
    max_steps: int = _f(0, "Max steps", "0: run the epochs")
    seed: int = _f(42, "Seed")
    logging_steps: int = _f(1, "Log every N steps")
    eval_steps: int = _f(50, "Evaluate every N steps", "0: only at the end")
    save_steps: int = _f(50, "Checkpoint every N steps", "also on cancel and at the end")
    sample_count: int = _f(3, "Held-out pictures for before/after samples")
    sample_tokens: int = _f(48, "Sample length (tokens)")
    dataset_hash: str = _f("", "Dataset hash", "filled in by the studio")
    # fixed for VLMs (the QLoRA trainer's arguments read them): no Liger kernels, no compiling
    optimizer: str = _f("auto", "Optimizer", "auto: fused AdamW on CUDA, AdamW on CPU")
    fused_kernels: str = _f("off", "Fused kernels", "not used for vision-language models",
                            choices=("off",))
    compile_layers: str = _f("off", "Compile layers", "not used for vision-language models",
                             choices=("off",))

    @property
    def gguf_file(self) -> str:  # the run card is the QLoRA trainer's; VLMs have no GGUF
        return ""

    def validate(self) -> None:
        if not self.base_model.strip():
            raise ValueError("choose a base VLM (hub id or folder)")
        self.check_choices()
        for name in ("lora_r", "lora_alpha", "micro_batch_size", "grad_accumulation",
                     "logging_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{self.label_of(name).lower()} must be at least 1")
        if not 64 <= self.max_seq_length <= 32768:
            raise ValueError("max length must be between 64 and 32768 tokens")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError("LoRA dropout must be in [0, 1)")
        if not 0 <= self.eval_fraction < 0.9:
            raise ValueError("eval share must be in [0, 0.9)")
        if self.learning_rate <= 0 or self.learning_rate > 1:
            raise ValueError("learning rate must be in (0, 1]")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ValueError("set epochs or max steps")
        if self.max_pixels and not 3136 <= self.max_pixels <= 4096 * 4096:
            raise ValueError("the picture cap must be between 3,136 and 16,777,216 pixels")
        for name in ("max_steps", "warmup_steps", "eval_steps", "save_steps", "sample_count"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{self.label_of(name).lower()} cannot be negative")
        if not 1 <= self.sample_tokens <= 1024:
            raise ValueError("sample length must be between 1 and 1024 tokens")

    def target_list(self) -> list[str] | None:
        """Module names LoRA wraps inside the language model (None: every linear layer)."""
        text = self.target_modules.strip()
        if text in ("", "all-linear"):
            return None
        return [t.strip() for t in text.split(",") if t.strip()]
