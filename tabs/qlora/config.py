"""QLoRAConfig: everything one QLoRA training run needs, in one typed object.

The UI fills it in, `train.run` reads it back from the run folder's ``config.json``. Labels and
help live in the field metadata so the form and the config cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from studio.jobconfig import JobConfig
from studio.jobconfig import setting as _f
from studio.safety import check_model_source

SCHEDULES = ("cosine", "linear", "constant_with_warmup")
QUANTIZATIONS = ("nf4", "none")  # none = plain LoRA (what CPU runs use anyway)
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
FUSED = ("auto", "off")
OFFLOAD = ("auto", "on", "off")
GGUF_TYPES = ("none", "Q8_0", "F16")  # studio.llm.gguf_export.TYPES
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,99}")




@dataclass
class QLoRAConfig(JobConfig):
    """One fine-tuning run: base model, data, LoRA shape, optimizer and reporting cadence."""

    NAME = "QLoRA"

    # base model and data
    base_model: str = _f("", "Base model", "hub id, local model folder, or a .gguf file "
                         "(GGUF bases are dequantized by transformers)", max_chars=1024)
    gguf_file: str = _f("", "GGUF file in that folder", "only for a folder holding .gguf files",
                        max_chars=1024)
    train_file: str = _f("", "Training data", "JSONL, JSON or CSV: alpaca, messages, ShareGPT "
                         "or prompt/completion", max_chars=1024)
    eval_file: str = _f("", "Separate eval file", "empty: split the training file",
                        max_chars=1024)
    eval_fraction: float = _f(0.1, "Eval share", "held out of the training file when there is "
                              "no eval file")
    skip_bad_records: bool = _f(False, "Skip malformed records", "off: any malformed record "
                                "stops the run so you can fix the file")
    train_on_prompt: bool = _f(False, "Loss on prompt tokens too", "off: loss only on the "
                               "answer tokens")
    max_seq_length: int = _f(2048, "Max sequence length (tokens)", "longer examples are cut",
                             minimum=16, maximum=131072)
    packing: bool = _f(False, "Packing", "padding-free: several examples per row, no pad "
                       "tokens (each keeps its own positions)")
    # quantization and LoRA
    quantization: str = _f("nf4", "Base weights", "4-bit NF4 + double quant on CUDA; CPU "
                           "always trains plain LoRA", choices=QUANTIZATIONS)
    precision: str = _f("auto", "Compute precision", "auto: bf16 where the card has it, else "
                        "fp16; fp32 on CPU", choices=PRECISIONS)
    lora_r: int = _f(16, "LoRA rank", minimum=1, maximum=1024)
    lora_alpha: int = _f(32, "LoRA alpha", minimum=1, maximum=8192)
    lora_dropout: float = _f(0.05, "LoRA dropout", minimum=0, maximum=0.9)
    target_modules: str = _f("all-linear", "Target modules", "'all-linear' or a comma list, "
                             "e.g. q_proj,v_proj", max_chars=1000)
    gradient_checkpointing: bool = _f(True, "Gradient checkpointing", "recompute activations: "
                                      "much less memory, ~30% slower")
    # optimisation
    micro_batch_size: int = _f(1, "Micro-batch", minimum=1, maximum=1024)
    grad_accumulation: int = _f(8, "Gradient accumulation", minimum=1, maximum=4096)
    learning_rate: float = _f(2e-4, "Learning rate", minimum=1e-9, maximum=1.0)
    schedule: str = _f("cosine", "Schedule", choices=SCHEDULES)
    warmup_steps: int = _f(10, "Warmup steps", minimum=0, maximum=1_000_000)
    epochs: float = _f(1.0, "Epochs", "used when max steps is 0", minimum=0, maximum=1000)
    max_steps: int = _f(0, "Max steps", "0: run the epochs", minimum=0, maximum=10_000_000)
    optimizer: str = _f("auto", "Optimizer", "auto: fused AdamW on CUDA (paged 8-bit AdamW when "
                        "activations are offloaded, i.e. memory is tight), AdamW on CPU; or any "
                        "transformers optim name, e.g. paged_adamw_8bit", max_chars=64)
    seed: int = _f(42, "Seed", minimum=0, maximum=2**32 - 1)
    # reporting
    logging_steps: int = _f(1, "Log every N steps", minimum=1, maximum=1_000_000)
    eval_steps: int = _f(50, "Evaluate every N steps", "0: only at the end", minimum=0,
                         maximum=1_000_000)
    save_steps: int = _f(50, "Checkpoint every N steps", "also on cancel and at the end",
                         minimum=0, maximum=1_000_000)
    sample_prompts: int = _f(3, "Eval prompts for base vs adapter samples", minimum=0,
                             maximum=50)
    sample_tokens: int = _f(64, "Sample length (tokens)", minimum=1, maximum=4096)
    tensorboard: bool = _f(False, "Log to TensorBoard", "writes run_dir/tensorboard")
    wandb: bool = _f(False, "Log to Weights & Biases", "only when wandb is installed and "
                     "logged in")
    merge_fp16: bool = _f(False, "Also export merged fp16 weights", "full model, several GB")
    dataset_hash: str = _f("", "Dataset hash", "filled in by the studio")
    # speed and memory (appended: positional API calls made before they existed keep working)
    fused_kernels: str = _f("auto", "Fused kernels", "auto: Liger Kernel's Triton kernels on "
                            "CUDA (RMSNorm, SwiGLU, RoPE, and a cross-entropy that never builds "
                            "the full logits); off: plain transformers", choices=FUSED)
    offload_activations: str = _f("auto", "Offload activations to CPU", "keeps the "
                                  "checkpointed layer inputs in CPU RAM: much longer sequences "
                                  "fit; auto: on when the estimate needs it", choices=OFFLOAD)
    compile_layers: str = _f("auto", "Compile layers", "auto: torch.compile each decoder layer "
                             "on CUDA, 4-bit matmuls included (fewer, fused kernel launches; "
                             "the first steps are slower while it compiles); off: eager",
                             choices=FUSED)
    export_gguf: str = _f("none", "Also export GGUF for llama.cpp / Ollama", "the base with the "
                          "adapter merged, one file: Q8_0 (about half of fp16, close to it) or "
                          "F16 (exact); runs as a job, the file appears in its Outputs",
                          choices=GGUF_TYPES)



    def target_list(self) -> str | list[str]:
        """What peft's LoraConfig takes: the string 'all-linear' or a list of names."""
        text = self.target_modules.strip()
        if text in ("", "all-linear"):
            return "all-linear"
        return [t.strip() for t in text.split(",") if t.strip()]

    def validate(self) -> None:
        """Plain-language ValueError for settings that cannot work."""
        if not self.base_model.strip():
            raise ValueError("choose a base model (hub id, folder or .gguf file)")
        check_model_source(self.base_model, label="Base model")  # pickles that run code: no
        targets = self.target_list()
        if targets != "all-linear" and not all(_MODULE.fullmatch(t) for t in targets):
            raise ValueError("target modules must be 'all-linear' or module names separated by "
                             f"commas, e.g. q_proj,v_proj; got {self.target_modules[:80]!r}")
        if self.optimizer != "auto" and not _MODULE.fullmatch(self.optimizer):
            raise ValueError(f"optimizer must be auto or a transformers optim name such as "
                             f"adamw_torch; got {self.optimizer[:80]!r}")
        for name in ("lora_r", "lora_alpha", "micro_batch_size", "grad_accumulation",
                     "logging_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{label_of(name)} must be at least 1")
        if not 16 <= self.max_seq_length <= 131072:
            raise ValueError("max sequence length must be between 16 and 131072 tokens")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError("LoRA dropout must be in [0, 1)")
        if not 0 <= self.eval_fraction < 0.9:
            raise ValueError("eval share must be in [0, 0.9)")
        if self.learning_rate <= 0:
            raise ValueError("learning rate must be positive")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ValueError("set epochs or max steps")
        for name in ("max_steps", "warmup_steps", "eval_steps", "save_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{label_of(name)} cannot be negative")


label_of, help_of, default_of = (QLoRAConfig.label_of, QLoRAConfig.help_of,
                                  QLoRAConfig.default_of)
