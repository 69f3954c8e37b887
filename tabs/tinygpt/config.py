"""TinyGPTConfig: everything one Tiny GPT training run needs, in one typed object.

The UI fills it in, `train.run` reads it back from the run folder's ``config.json``. UI labels and
help text live in each field's metadata so the form and the config cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from studio.jobconfig import JobConfig
from studio.jobconfig import setting as _f
from tabs.tinygpt.model import POS_SCHEMES, GPTConfig

CORPORA = ("stdlib", "upload", "folder")
TOKENIZERS = ("char", "bpe")
DEVICES = ("auto", "cpu", "cuda")




@dataclass
class TinyGPTConfig(JobConfig):
    """One training run: corpus, tokenizer, model shape, optimizer and reporting cadence."""

    NAME = "Tiny GPT"

    # corpus and tokenizer
    corpus: str = _f("stdlib", "Corpus", "Python's standard library source (every machine has "
                     "it), an uploaded text/zip file, or a folder under the studio home",
                     choices=CORPORA)
    corpus_path: str = _f("", "Corpus file or folder", "upload: the saved file; folder: a path "
                          "under the studio home (e.g. the RAG knowledge base)", max_chars=1024)
    max_corpus_chars: int = _f(2_000_000, "Corpus size cap (characters)",
                               "keeps tokenizing and training quick", minimum=1,
                               maximum=200_000_000)
    tokenizer: str = _f("char", "Tokenizer", "one token per character, or byte-level BPE "
                        "trained on the corpus", choices=TOKENIZERS)
    vocab_size: int = _f(2048, "BPE vocabulary size", "BPE only; the char vocabulary is the "
                         "corpus's own characters")
    val_fraction: float = _f(0.1, "Validation share", "the last part of the corpus, never "
                             "trained on")
    # model
    pos: str = _f("rope", "Positional scheme", "learned vectors, rotary (RoPE) or ALiBi",
                  choices=POS_SCHEMES)
    n_layer: int = _f(4, "Layers", minimum=1, maximum=48)
    n_head: int = _f(4, "Heads", minimum=1, maximum=64)
    n_embd: int = _f(128, "Width", "embedding size; must divide by the heads", minimum=8,
                     maximum=4096)
    block_size: int = _f(128, "Context (tokens)", "how far back the model sees in training",
                         minimum=8, maximum=8192)
    dropout: float = _f(0.0, "Dropout")
    # optimisation
    batch_size: int = _f(32, "Batch size", minimum=1, maximum=4096)
    max_steps: int = _f(1000, "Steps", minimum=1, maximum=10_000_000)
    learning_rate: float = _f(1e-3, "Peak learning rate", minimum=1e-9, maximum=1.0)
    min_lr: float = _f(1e-4, "Final learning rate", "end of the cosine decay", minimum=0,
                       maximum=1.0)
    warmup_steps: int = _f(50, "Warmup steps", "linear ramp from 0 to the peak", minimum=0,
                           maximum=1_000_000)
    weight_decay: float = _f(0.1, "Weight decay", "AdamW, on matrices only", minimum=0,
                             maximum=10)
    grad_clip: float = _f(1.0, "Gradient clip (norm)", "0 turns it off", minimum=0,
                          maximum=1000)
    amp: bool = _f(True, "Mixed precision on GPU", "bf16 (or fp16 with loss scaling)")
    device: str = _f("auto", "Device", "auto = the GPU if there is one", choices=DEVICES)
    seed: int = _f(1337, "Seed", minimum=0, maximum=2**32 - 1)
    # reporting
    log_every: int = _f(10, "Log train loss every N steps", minimum=1, maximum=1_000_000)
    eval_every: int = _f(100, "Evaluate every N steps", minimum=1, maximum=1_000_000)
    eval_batches: int = _f(10, "Validation batches per evaluation", minimum=1, maximum=10_000)
    sample_every: int = _f(200, "Sample text every N steps", "0 turns samples off", minimum=0,
                           maximum=1_000_000)
    sample_tokens: int = _f(120, "Sample length (tokens)", minimum=1, maximum=8192)
    checkpoint_every: int = _f(200, "Checkpoint every N steps", "also saved on cancel and at "
                               "the end", minimum=0, maximum=1_000_000)



    def validate(self) -> None:
        """Plain messages for settings that cannot work, before a job is started."""
        self.check_choices()
        if self.corpus != "stdlib" and not self.corpus_path:
            raise ValueError(f"the {self.corpus} corpus needs a file or folder")
        for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "max_steps",
                     "log_every", "eval_every", "eval_batches", "max_corpus_chars"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{label_of(name)} must be at least 1")
        if self.tokenizer == "bpe" and not 260 <= self.vocab_size <= 65536:
            raise ValueError("BPE vocabulary size must be between 260 and 65536")
        if self.n_embd % self.n_head:
            raise ValueError(f"width {self.n_embd} must be divisible by heads {self.n_head}")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("RoPE needs an even head size (width / heads)")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError("validation share must be between 0 and 0.5")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.learning_rate <= 0 or self.min_lr < 0 or self.min_lr > self.learning_rate:
            raise ValueError("learning rates must satisfy 0 <= final <= peak, peak > 0")
        if self.warmup_steps < 0 or self.sample_every < 0 or self.checkpoint_every < 0:
            raise ValueError("warmup, sample and checkpoint intervals cannot be negative")

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size,
                         n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                         dropout=self.dropout, pos=self.pos)


label_of, help_of, default_of = (TinyGPTConfig.label_of, TinyGPTConfig.help_of,
                                  TinyGPTConfig.default_of)

# The class defaults are sized for a GPU (about a minute there); on a 2-core CPU they took ~46
# minutes, so the tab starts a CPU user with a run 13x smaller (4x fewer tokens a step, 3.3x
# fewer steps) that finishes in a few minutes and still learns words.
CPU_DEFAULTS = {"max_steps": 300, "batch_size": 16, "block_size": 64}


def default_for(name: str, device: str) -> Any:
    """The value the tab offers first for `name` on `device` ("cpu" or "cuda")."""
    if device != "cuda" and name in CPU_DEFAULTS:
        return CPU_DEFAULTS[name]
    return default_of(name)
