"""The Tiny GPT training job: ``run(config, report)``, run by ``python -m studio.worker``.

One flat loop after nanoGPT's ``train.py``: AdamW, a linear warmup then cosine decay of the
learning rate, gradient clipping, mixed precision on the GPU. Along the way it reports train and
validation loss, perplexity and tokens/s, writes sample text, and keeps one checkpoint per run
(``ckpt.pt``) that a cancelled run resumes from. At the end it measures validation perplexity at
the training context and at twice that (length extrapolation) into ``results.json``, which the
comparison table reads.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from studio.reporting import Reporter, read_events
from tabs.tinygpt import data as D
from tabs.tinygpt.config import TinyGPTConfig
from tabs.tinygpt.metrics import estimate_loss, perplexity, window_perplexity
from tabs.tinygpt.model import GPT, GPTConfig, generate

CKPT = "ckpt.pt"
TOKENIZER = "tokenizer.json"
TOKENS = "tokens.pt"
RESULTS = "results.json"
SAMPLES = "samples.txt"


def pick_device(choice: str) -> str:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def lr_at(step: int, cfg: TinyGPTConfig) -> float:
    """Linear warmup to the peak, then cosine decay to `min_lr` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def make_optimizer(model: GPT, cfg: TinyGPTConfig, device: str) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: decaying biases, norms and the embedding's
    role as a lookup table is not what decay is for (nanoGPT does the same)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.95),
                             fused=device == "cuda")


def amp_settings(device: str, enabled: bool) -> tuple[Any, torch.amp.GradScaler | None]:
    """Autocast context factory and loss scaler: bf16 where the GPU has it (no scaler needed),
    fp16 with a GradScaler otherwise, plain fp32 on CPU."""
    if device != "cuda" or not enabled:
        return nullcontext, None
    if torch.cuda.is_bf16_supported():
        return partial(torch.autocast, "cuda", dtype=torch.bfloat16), None
    return partial(torch.autocast, "cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def prepare_data(cfg: TinyGPTConfig, run_dir: Path,
                 report: Reporter) -> tuple[Tokenizer, torch.Tensor, torch.Tensor]:
    """Read the corpus, train the tokenizer and encode once; both are kept in the run folder,
    so a resumed run trains on exactly the same tokens even if the upload is gone."""
    tok_path, ids_path = run_dir / TOKENIZER, run_dir / TOKENS
    if tok_path.exists() and ids_path.exists():
        train, val = D.load_token_ids(ids_path)
        return Tokenizer.from_file(str(tok_path)), train, val
    report.progress(0, cfg.max_steps, "reading the corpus")
    corpus = D.load_corpus(cfg.corpus, cfg.corpus_path, cfg.max_corpus_chars)
    report.log(corpus.summary())
    for name, reason in corpus.skipped[:50]:
        report.log(f"skipped {name}: {reason}")
    report.progress(0, cfg.max_steps, f"training the {cfg.tokenizer} tokenizer")
    tok = D.train_tokenizer(corpus.text, cfg.tokenizer, cfg.vocab_size)
    ids = D.encode(tok, corpus.text)
    stats = D.tokenizer_stats(tok, corpus.text, ids)
    report.log("tokenizer: {vocab_size} tokens in vocabulary, corpus = {tokens:,} tokens, "
               "{chars_per_token:.2f} characters per token".format(**stats))
    train, val = D.split_ids(ids, cfg.val_fraction)
    if len(val) <= cfg.block_size + 1:
        raise ValueError(f"the validation part has {len(val)} tokens, too few for a context of "
                         f"{cfg.block_size}; use a bigger corpus, a bigger validation share or a "
                         "shorter context")
    tok.save(str(tok_path))
    D.save_token_ids(ids_path, train, val)
    _write_json(run_dir / "corpus.json", {"summary": corpus.summary(), "sources": len(
        corpus.sources), "skipped": corpus.skipped, "tokenizer": stats})
    return tok, train, val


def train_step(model: GPT, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               autocast: Any = nullcontext, scaler: torch.amp.GradScaler | None = None,
               grad_clip: float = 1.0) -> torch.Tensor:
    """One optimizer step; returns the loss (still on the device: reading it syncs the GPU)."""
    with autocast():
        _, loss = model(x, y)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
    else:
        loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def save_checkpoint(path: Path, model: GPT, opt: torch.optim.Optimizer, step: int,
                    tokens_seen: int, scaler: torch.amp.GradScaler | None = None) -> None:
    tmp = Path(str(path) + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "tokens_seen": tokens_seen, "model_config": model.config.to_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None}, tmp)
    os.replace(tmp, path)  # a cancel mid-write never leaves half a checkpoint


def run(config: dict[str, Any], report: Reporter) -> None:
    """Train one Tiny GPT; see the module docstring."""
    cfg = TinyGPTConfig.from_dict(config)
    run_dir = Path(report.run_dir)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    tok, train_ids, val_ids = prepare_data(cfg, run_dir, report)
    model = GPT(cfg.model_config(tok.get_vocab_size())).to(device)
    opt = make_optimizer(model, cfg, device)
    autocast, scaler = amp_settings(device, cfg.amp)
    step, tokens_seen = 0, 0
    last = report.last_checkpoint()
    if last is not None:
        state = torch.load(last[0], map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, tokens_seen = state["step"], state["tokens_seen"]
        report.log(f"resumed from step {step}")
    else:
        report.log(f"{model.num_params() / 1e6:.2f}M parameters, {cfg.pos} positions, "
                   f"context {cfg.block_size}, on {device}")
    _artifact_once(report, run_dir / TOKENIZER, "file", "tokenizer")

    # Batches depend on the step they resume from, so a resumed run does not replay old ones.
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + step)
    ckpt_path = run_dir / CKPT
    evaluate = partial(estimate_loss, block_size=cfg.block_size, batch_size=cfg.batch_size,
                       batches=cfg.eval_batches, seed=cfg.seed, autocast=autocast)
    model.train()
    t_mark, tokens_mark = time.perf_counter(), 0
    tokens_per_s = 0.0
    while step < cfg.max_steps and not report.should_stop():
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = D.get_batch(train_ids, cfg.block_size, cfg.batch_size, gen)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = train_step(model, opt, x, y, autocast, scaler, cfg.grad_clip)
        step += 1
        tokens_seen += x.numel()
        tokens_mark += x.numel()

        if step % cfg.log_every == 0 or step == cfg.max_steps:
            train_loss = loss.item()  # syncs the GPU, so the timing below is honest
            now = time.perf_counter()
            tokens_per_s = tokens_mark / max(1e-9, now - t_mark)
            report.metrics(step, train_loss=train_loss, train_ppl=perplexity(train_loss), lr=lr,
                           tokens_per_s=tokens_per_s)
            report.progress(step, cfg.max_steps, f"step {step}: train loss {train_loss:.3f}, "
                            f"{tokens_per_s:,.0f} tokens/s")
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            val_loss = evaluate(model, val_ids)
            report.metrics(step, val_loss=val_loss, val_ppl=perplexity(val_loss))
            report.log(f"step {step}: val loss {val_loss:.3f}, val perplexity "
                       f"{perplexity(val_loss):.2f}")
        if cfg.sample_every and step % cfg.sample_every == 0:
            _write_sample(report, model, tok, val_ids, cfg, step)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            save_checkpoint(ckpt_path, model, opt, step, tokens_seen, scaler)
            report.checkpoint(ckpt_path, step)
        if step % cfg.log_every == 0:  # restart the clock after eval/sample/checkpoint work
            t_mark, tokens_mark = time.perf_counter(), 0

    save_checkpoint(ckpt_path, model, opt, step, tokens_seen, scaler)
    report.checkpoint(ckpt_path, step)
    _artifact_once(report, ckpt_path, "model", "checkpoint (model + optimizer)")
    if report.should_stop() and step < cfg.max_steps:
        report.log(f"stopped at step {step}; checkpoint saved, resume to continue")
        return
    results = final_results(model, val_ids, cfg, step, tokens_seen, tokens_per_s, device)
    _write_json(run_dir / RESULTS, results)
    _artifact_once(report, run_dir / RESULTS, "file", "results")
    ext = results["val_ppl_2x"]
    report.log(f"val perplexity {results['val_ppl']:.2f} at context {cfg.block_size}; "
               + (f"{ext:.2f} at {2 * cfg.block_size}" if ext is not None
                  else f"2x context: {results['extrapolation_note']}"))


def final_results(model: GPT, val_ids: torch.Tensor, cfg: TinyGPTConfig, step: int,
                  tokens_seen: int, tokens_per_s: float, device: str) -> dict[str, Any]:
    """Validation perplexity at 1x and 2x the training context over the same tokens."""
    ctx = cfg.block_size
    span = min(len(val_ids) - 1, 32_768) // (2 * ctx) * (2 * ctx)
    note = ""
    if span == 0:  # too little validation text for a 2x window: score what 1x can
        ppl = window_perplexity(model, val_ids, ctx)
        ppl_2x = None
        note = "validation text shorter than 2x the context"
    else:
        ppl = window_perplexity(model, val_ids, ctx, max_tokens=span)
        ppl_2x = None
        if model.max_positions() is None:
            ppl_2x = window_perplexity(model, val_ids, 2 * ctx, max_tokens=span)
        else:
            note = "learned positions stop at the training context"
    return {"step": step, "tokens_seen": tokens_seen, "val_ppl": ppl, "val_ppl_2x": ppl_2x,
            "extrapolation_note": note, "context": ctx, "pos": cfg.pos,
            "params": model.num_params(), "tokens_per_s": tokens_per_s, "device": device,
            "tokenizer": cfg.tokenizer, "vocab_size": model.config.vocab_size}


def _write_sample(report: Reporter, model: GPT, tok: Tokenizer, val_ids: torch.Tensor,
                  cfg: TinyGPTConfig, step: int) -> None:
    """Continue a short validation prompt, so the user sees the text getting better."""
    prompt = val_ids[: min(16, cfg.block_size // 4)].unsqueeze(0)
    n_new = min(cfg.sample_tokens, cfg.block_size - prompt.shape[1])
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(cfg.seed)
    model.eval()  # fp32 even under AMP: a few hundred tokens of a tiny model cost nothing
    out = generate(model, prompt.to(next(model.parameters()).device), n_new,
                   temperature=0.8, top_k=40, generator=g)
    model.train()
    text = tok.decode(out[0].tolist())
    report.log(f"sample at step {step}:\n{text}")
    path = Path(report.run_dir) / SAMPLES
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"===== step {step} =====\n{text}\n\n")
    _artifact_once(report, path, "file", "samples")


def _artifact_once(report: Reporter, path: Path, kind: str, label: str) -> None:
    """Register an output once per run, even across resumed attempts."""
    rel = os.path.relpath(path, report.run_dir)
    if not any(ev.get("type") == "artifact" and ev.get("path") == rel
               for ev in read_events(Path(report.run_dir))):
        report.artifact(path, kind=kind, label=label)


def _write_json(path: Path, obj: Any) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


# ----- using a trained run -----------------------------------------------------------------------
def load_trained(run_dir: Path, device: str = "cpu") -> tuple[GPT, Tokenizer]:
    """The model and tokenizer of a run (its newest checkpoint), ready for generation."""
    run_dir = Path(run_dir)
    if not (run_dir / CKPT).exists():
        raise ValueError(f"run {run_dir.name} has no checkpoint yet")
    state = torch.load(run_dir / CKPT, map_location=device, weights_only=True)
    model = GPT(GPTConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return model, Tokenizer.from_file(str(run_dir / TOKENIZER))


@dataclass
class Generation:
    """What the generate box shows."""

    text: str  # the continuation only
    prompt_tokens: int
    new_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / max(1e-9, self.seconds)


def generate_text(model: GPT, tok: Tokenizer, prompt: str, max_new_tokens: int,
                  temperature: float = 0.8, top_k: int | None = 40, use_cache: bool = True,
                  seed: int = 0) -> Generation:
    """Continue `prompt`. A learned-position model sees at most its trained context: the prompt
    is cut to its last tokens, and past the context each new token sees the last ones only."""
    if max_new_tokens < 1:
        raise ValueError("ask for at least one new token")
    ids = tok.encode(prompt, add_special_tokens=False).ids if prompt else []
    if not ids:  # an empty prompt: start from a newline, which every corpus has
        ids = tok.encode("\n", add_special_tokens=False).ids or [0]
    limit = model.max_positions()
    if limit is not None:
        ids = ids[-limit:]
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    t0 = time.perf_counter()
    out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                   use_cache=use_cache, generator=g)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return Generation(text=tok.decode(out[0, len(ids):].tolist()), prompt_tokens=len(ids),
                      new_tokens=max_new_tokens, seconds=seconds)
