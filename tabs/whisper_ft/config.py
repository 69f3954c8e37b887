"""WhisperFTConfig: one Whisper fine-tuning run, typed, with defaults for a few hours of audio.

Defaults follow the Hugging Face Whisper fine-tuning guide (learning rate 1e-5 for a full
fine-tune, warm-up, WER on a held-out set) scaled to a user's own recordings: fewer steps, eval
more often. LoRA (medium and larger: the full model's optimizer state would not fit 12 GB) uses
the usual PEFT recipe for Whisper: r 32 on the attention and MLP projections, learning rate 1e-3.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from studio.jobconfig import JobConfig
from studio.jobconfig import setting as _f

METHODS = ("auto", "full", "lora")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SWITCHES = ("auto", "on", "off")
OPTIMIZERS = ("auto", "adamw_8bit", "adamw_torch")
TASKS = ("transcribe", "translate")
BASES = ("openai/whisper-small", "openai/whisper-medium", "openai/whisper-small.en",
         "openai/whisper-medium.en", "openai/whisper-base", "openai/whisper-tiny")
LORA_TARGETS = "q_proj,k_proj,v_proj,out_proj,fc1,fc2"


@dataclass
class WhisperFTConfig(JobConfig):
    """Base model, data, method, optimisation and reporting of one fine-tune."""

    NAME = "Whisper fine-tune"

    base_model: str = _f("openai/whisper-small", "Base model", "hub id or a local transformers "
                         "Whisper folder (config.json + weights + tokenizer)")
    dataset: str = _f("", "Dataset", "the id 'Prepare data' gave")
    language: str = _f("en", "Language", "fixed for training and decoding (e.g. en, de, fr)")
    task: str = _f("transcribe", "Task", choices=TASKS)
    method: str = _f("auto", "Method", "auto: full fine-tune for tiny/base/small, LoRA for "
                     "medium and larger (fits 12 GB)", choices=METHODS)
    lora_r: int = _f(32, "LoRA rank")
    lora_alpha: int = _f(64, "LoRA alpha")
    lora_dropout: float = _f(0.0, "LoRA dropout", "0 (PEFT's default): with dropout the "
                             "cross-attention adapters of every decoder layer keep their own "
                             "copy of the encoder output (1.8 GB for medium at batch 8), so on "
                             "12 GB more layers must recompute; SpecAugment already regularises")
    lora_targets: str = _f(LORA_TARGETS, "LoRA target modules")
    precision: str = _f("auto", "Precision", "auto: bf16 where the card has it, else fp16; "
                        "fp32 on CPU", choices=PRECISIONS)
    gradient_checkpointing: str = _f("auto", "Gradient checkpointing", "auto: on as few "
                                     "layers as the memory estimate needs (none if it fits)",
                                     choices=SWITCHES)
    optimizer: str = _f("auto", "Optimizer", "auto: fused AdamW on CUDA, 8-bit AdamW "
                        "(bitsandbytes) when the optimizer state would not fit; AdamW on CPU",
                        choices=OPTIMIZERS)
    spec_augment: bool = _f(True, "SpecAugment", "mask random time and frequency bands of the "
                            "input while training (less over-fitting on a few hours)")
    freeze_encoder: bool = _f(False, "Freeze the encoder", "train the decoder only: faster, "
                              "learns vocabulary and names more than accents")
    batch_size: int = _f(8, "Batch size")
    grad_accumulation: int = _f(2, "Gradient accumulation")
    learning_rate: float = _f(0.0, "Learning rate", "0: 1e-5 for a full fine-tune, 1e-3 for "
                              "LoRA")
    warmup_steps: int = _f(50, "Warm-up steps")
    max_steps: int = _f(1000, "Steps")
    weight_decay: float = _f(0.0, "Weight decay")
    eval_steps: int = _f(100, "Evaluate WER every N steps", "0: only before and after")
    eval_pieces: int = _f(200, "Held-out pieces per evaluation", "the before/after WER uses "
                          "all of them")
    save_steps: int = _f(100, "Checkpoint every N steps", "also on cancel")
    glossary: str = _f("", "Glossary", "names and jargon, comma or line separated: their "
                       "recall is reported before and after")
    generation_max_tokens: int = _f(225, "Max tokens per piece when decoding")
    export_ct2: bool = _f(True, "Convert to CTranslate2 at the end", "float16 and int8 "
                          "folders that faster-whisper (the Transcribe tab) loads")
    seed: int = _f(42, "Seed")
    dataset_hash: str = _f("", "Dataset hash", "filled in by the studio")
    memory_budget_gib: float = _f(0.0, "Memory budget (GiB)", "filled in by the studio: what "
                                  "the memory plan may use; 0 = the whole card",
                                  minimum=0, maximum=100_000)

    def resolved_method(self) -> str:
        if self.method != "auto":
            return self.method
        name = Path(self.base_model).name.lower()
        return "lora" if any(k in name for k in ("medium", "large", "turbo")) else "full"

    def resolved_lr(self) -> float:
        if self.learning_rate > 0:
            return self.learning_rate
        return 1e-3 if self.resolved_method() == "lora" else 1e-5

    def glossary_terms(self) -> list[str]:
        parts = [t.strip() for chunk in self.glossary.splitlines() for t in chunk.split(",")]
        seen: list[str] = []
        for t in parts:
            if t and t.lower() not in (s.lower() for s in seen):
                seen.append(t)
        return seen

    def validate(self) -> None:
        if not self.base_model.strip():
            raise ValueError("choose a base model (hub id or local Whisper folder)")
        if not self.dataset.strip():
            raise ValueError("prepare a dataset first (step 1)")
        self.check_choices()
        if not self.language.strip().isalpha() or len(self.language.strip()) > 8:
            raise ValueError("language must be a code such as en, de or fr")
        for name in ("lora_r", "lora_alpha", "batch_size", "grad_accumulation", "max_steps",
                     "eval_pieces", "generation_max_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{self.label_of(name).lower()} must be at least 1")
        for name in ("warmup_steps", "eval_steps", "save_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{self.label_of(name).lower()} cannot be negative")
        if self.batch_size > 256 or self.max_steps > 1_000_000:
            raise ValueError("batch size at most 256, steps at most 1,000,000")
        if self.generation_max_tokens > 444:
            raise ValueError("Whisper decodes at most 448 tokens per window (444 after the "
                             "prompt)")
        if self.learning_rate < 0 or self.learning_rate > 1:
            raise ValueError("learning rate must be in [0, 1] (0 = the method's default)")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError("LoRA dropout must be in [0, 1)")
        if len(self.glossary) > 20_000:
            raise ValueError("the glossary is too long (at most 20,000 characters)")


label_of, help_of, default_of = (WhisperFTConfig.label_of, WhisperFTConfig.help_of,
                                  WhisperFTConfig.default_of)
