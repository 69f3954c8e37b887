"""What the Tiny GPT tab does for the UI, without Gradio: stage an upload, start a training job,
preview a corpus and tokenizer, list trained runs, and generate text from one through the shared
model manager."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio import safety
from studio.jobs import ALL, hash_files
from studio.models import ModelSpec, PinnedSwap
from tabs.tinygpt import data as D
from tabs.tinygpt.config import TinyGPTConfig
from tabs.tinygpt.train import CKPT, Generation, generate_text, load_trained

KIND = "tinygpt"
ENTRY = "tabs.tinygpt.train:run"


def _warm_tier() -> dict[str, Any]:
    """Pinned CPU copy for the manager's warm tier. A captured CUDA-graph decoder points at the
    old weight addresses, so it is dropped on restore and captured again on first use."""
    swap = PinnedSwap()

    def restore(model: Any, device: str) -> Any:
        model = swap.restore(model, device)
        model._graph_decoder = None
        return model

    return {**swap.spec_kwargs(), "restore": restore}


def stage_upload(src: str | Path, uploads_dir: Path) -> Path:
    """Copy a Gradio upload (a temp file that may vanish) into the studio's uploads folder,
    named by its content hash so the same file is kept once (studio.safety.stage_upload)."""
    return safety.stage_upload(src, Path(uploads_dir) / KIND, label="Corpus upload")


def resolve_corpus(cfg: TinyGPTConfig, home: Path, upload: str | Path | None) -> TinyGPTConfig:
    """Fill in `corpus_path` for the chosen corpus and check it before a job starts."""
    if cfg.corpus == "upload":
        if not upload:
            raise ValueError("upload a text file or a zip of text files first")
        cfg.corpus_path = str(stage_upload(upload, Path(home) / "uploads"))
    elif cfg.corpus == "folder":
        if not cfg.corpus_path:
            raise ValueError("give a folder inside the studio home")
        folder = D.resolve_under(cfg.corpus_path, home)
        if not folder.is_dir():
            raise ValueError(f"{cfg.corpus_path} is not a folder")
        cfg.corpus_path = str(folder)
    else:
        cfg.corpus_path = ""
    cfg.validate()
    return cfg


def dataset_hash(cfg: TinyGPTConfig) -> str:
    """What the run trained on, recorded in its folder."""
    if cfg.corpus == "stdlib":
        ident = f"stdlib-{sys.version_info[:3]}-{cfg.max_corpus_chars}"
        return hashlib.sha256(ident.encode()).hexdigest()[:16]
    path = Path(cfg.corpus_path)
    return hash_files(p for p in path.rglob("*") if p.is_file()) if path.is_dir() \
        else hash_files([path])


def estimate_train_bytes(cfg: TinyGPTConfig, vocab_size: int | None = None) -> int:
    """GPU memory a training run needs, roughly: weights, gradients and AdamW state in fp32
    (16 bytes a parameter) plus activations (bf16, after Korthikanti et al.) and the logits."""
    vocab = vocab_size or (cfg.vocab_size if cfg.tokenizer == "bpe" else 256)
    C, L, T, B, H = cfg.n_embd, cfg.n_layer, cfg.block_size, cfg.batch_size, cfg.n_head
    params = 12 * L * C * C + vocab * C + (T * C if cfg.pos == "learned" else 0)
    activations = B * T * L * (34 * C + 5 * H * T)
    logits = B * T * vocab * 4 * 3  # fp32 logits, their softmax and gradient
    return int(16 * params + activations + logits + 256 * 2**20)  # + CUDA context slack


def run_title(cfg: TinyGPTConfig) -> str:
    return (f"{cfg.pos} · {cfg.n_layer}x{cfg.n_embd} · ctx {cfg.block_size} · {cfg.tokenizer}"
            + (f" {cfg.vocab_size}" if cfg.tokenizer == "bpe" else ""))


def submit_training(studio: Any, cfg: TinyGPTConfig, upload: str | Path | None = None,
                    owner: Any = ALL) -> str:
    """Check the settings, then queue the job, `owner`'s (studio.sessions.owner_of); returns
    the run id."""
    cfg = resolve_corpus(cfg, studio.settings.home, upload)
    if cfg.device == "cuda" and studio.device != "cuda":
        raise ValueError("this machine has no CUDA GPU; pick the device 'auto' or 'cpu'")
    vram = estimate_train_bytes(cfg) if studio.device == "cuda" and cfg.device != "cpu" else 0
    return studio.jobs.submit(kind=KIND, entry=ENTRY, config=cfg.to_dict(), title=run_title(cfg),
                              vram_bytes=vram, dataset_hash=dataset_hash(cfg), seed=cfg.seed,
                              owner=owner)


@dataclass
class Preview:
    corpus: str
    stats: dict[str, float]
    skipped: list[tuple[str, str]]
    sample: list[str] | None = None  # the pieces a sample of the corpus is cut into

    def markdown(self) -> str:
        s = self.stats
        lines = [f"**{self.corpus}**",
                 f"- vocabulary: {s['vocab_size']:,} tokens",
                 f"- corpus: {s['characters']:,} characters → {s['tokens']:,} tokens",
                 f"- compression: **{s['chars_per_token']:.2f} characters per token** "
                 f"({s['bytes_per_token']:.2f} bytes per token)"]
        if self.skipped:
            lines.append(f"- skipped {len(self.skipped)} file(s): " + "; ".join(
                f"`{n}` ({r})" for n, r in self.skipped[:8])
                + (" …" if len(self.skipped) > 8 else ""))
        if self.sample:
            shown = "|".join(p.replace("\n", "↵").replace("|", "¦") for p in self.sample)
            lines += ["", f"**How the tokenizer cuts the start of the corpus** "
                      f"({len(self.sample)} tokens, `|` between tokens, ↵ = newline):",
                      "", "```text", shown, "```"]
        return "\n".join(lines)


SAMPLE_TOKENS = 48


def token_sample(tok: Any, text: str, n: int = SAMPLE_TOKENS) -> list[str]:
    """The first `n` tokens of `text` as the text each stands for (a byte-level BPE piece that
    is part of a character shows as �)."""
    start = text[:4000]
    ids = tok.encode(start).ids[:n]
    return [tok.decode([i]) for i in ids]


def preview(cfg: TinyGPTConfig, home: Path, upload: str | Path | None = None) -> Preview:
    """Read the corpus and train the tokenizer as a job would, to show the compression ratio
    before committing to a run."""
    cfg = resolve_corpus(cfg, home, upload)
    corpus = D.load_corpus(cfg.corpus, cfg.corpus_path, cfg.max_corpus_chars)
    tok = D.train_tokenizer(corpus.text, cfg.tokenizer, cfg.vocab_size)
    stats = D.tokenizer_stats(tok, corpus.text)
    return Preview(corpus=corpus.summary(), stats=stats, skipped=corpus.skipped,
                   sample=token_sample(tok, corpus.text))


def delete_run(studio: Any, run_id: str, owner: Any = ALL) -> str:
    """Delete a finished Tiny GPT run of `owner`'s: its model leaves the manager, its folder the
    disk. A run that is queued or running is refused (cancel it first); another owner's run is
    a KeyError, as a missing one, and a shared one a PermissionError (`JobManager.delete`)."""
    from studio.jobs import FINAL

    if not run_id:
        raise ValueError("pick a run to delete")
    v = studio.jobs.view(run_id, log_lines=0, owner=owner)  # KeyError: none of the owner's
    if v.kind != KIND:
        raise ValueError(f"run {run_id} is not a Tiny GPT run")
    if v.status not in FINAL:
        raise ValueError(f"run {run_id} is {v.status}; cancel it before deleting it")
    keys = studio.extras.setdefault("tinygpt_keys", {})
    if owner is ALL or v.owner == owner:  # a shared run is refused below, its model kept
        if run_id in keys and not studio.models.evict(keys[run_id]):
            raise ValueError(f"run {run_id}'s model is generating right now; try again in a "
                             "moment")
        keys.pop(run_id, None)
    studio.jobs.delete(run_id, owner)
    return f"Deleted run {v.title} ({run_id})."


def runs(studio: Any, owner: Any = ALL) -> list[Any]:
    """`owner`'s Tiny GPT runs and the shared ones, newest first (the compare table, the
    curves and the pickers list these only)."""
    return studio.jobs.list_runs(KIND, owner=owner)


# ----- generation ----------------------------------------------------------------------------
def trained_runs(studio: Any, owner: Any = ALL) -> list[tuple[str, str]]:
    """(label, run id) of `owner`'s Tiny GPT runs with a checkpoint (and shared ones), newest
    first."""
    out = []
    for v in runs(studio, owner):
        if (Path(v.run_dir) / CKPT).exists():
            out.append((f"{v.title} · {v.status} · {v.id[-6:]}", v.id))
    return out


def model_key(studio: Any, run_id: str, owner: Any = ALL) -> str:
    """Register the run's checkpoint with the model manager (once per checkpoint version) and
    return its key. A resumed run writes a new checkpoint, which gets a new key; the old one is
    evicted so generation never uses stale weights. Another owner's run is a KeyError."""
    studio.jobs.check(run_id, owner)
    run_dir = studio.jobs.run_dir(run_id)
    ckpt = run_dir / CKPT
    if not ckpt.exists():
        raise ValueError(f"run {run_id} has no checkpoint yet")
    key = f"{KIND}:{run_id}:{ckpt.stat().st_mtime_ns}"
    if not studio.models.is_registered(key):
        current = studio.extras.setdefault("tinygpt_keys", {})
        old = current.get(run_id)
        if old is not None and old != key:
            studio.models.evict(old)
        current[run_id] = key
    size = ckpt.stat().st_size // 3  # the file also holds the optimizer's two moments
    return studio.models.ensure(key, lambda: ModelSpec(
        key=key, load=lambda device: load_trained(run_dir, device)[0],
        title=f"Tiny GPT {run_id[-6:]}", estimate=size, reserve=64 * 2**20, **_warm_tier()))


def generate_from_run(studio: Any, run_id: str, prompt: str, max_new_tokens: int,
                      temperature: float, top_k: int | None, use_cache: bool,
                      seed: int = 0, owner: Any = ALL) -> Generation:
    """Generate from a trained run (`owner`'s or a shared one) with the model manager holding
    the weights."""
    from tokenizers import Tokenizer

    if not run_id:
        raise ValueError("pick a trained run")
    if not 1 <= max_new_tokens <= 2000:
        raise ValueError("new tokens must be between 1 and 2000")
    if temperature < 0:
        raise ValueError("temperature cannot be negative")
    key = model_key(studio, run_id, owner)
    tok = Tokenizer.from_file(str(studio.jobs.run_dir(run_id) / "tokenizer.json"))
    return studio.models.call_with_oom_retry(key, lambda model: generate_text(
        model, tok, prompt, max_new_tokens, temperature=temperature,
        top_k=top_k if top_k and top_k > 0 else None, use_cache=use_cache, seed=seed))
