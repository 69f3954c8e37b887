"""Perplexity and loss estimates.

Perplexity is ``exp(mean negative log-likelihood per token)``: the number of equally likely
tokens the model is, on average, choosing between. A model that knows nothing over a vocabulary
of V tokens has perplexity V.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from tabs.tinygpt.data import get_batch
from tabs.tinygpt.model import GPT


def perplexity(mean_nll: float) -> float:
    """exp(mean NLL), capped so a diverged run shows inf instead of raising."""
    return math.exp(mean_nll) if mean_nll < 700 else float("inf")


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of each target token, shape of `targets`."""
    nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                          reduction="none")
    return nll.view(targets.shape)


@torch.no_grad()
def estimate_loss(model: GPT, data: torch.Tensor, block_size: int, batch_size: int,
                  batches: int, seed: int = 0, autocast=nullcontext) -> float:
    """Mean loss over `batches` random windows; a fixed seed makes every evaluation of a run
    (and of runs on the same data) use the same windows, so the numbers compare."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    total = 0.0
    for _ in range(batches):
        x, y = get_batch(data, block_size, batch_size, g)
        with autocast():
            _, loss = model(x.to(device), y.to(device))
        total += loss.item()
    model.train(was_training)
    return total / batches


@torch.no_grad()
def window_perplexity(model: GPT, data: torch.Tensor, context: int, max_tokens: int = 32_768,
                      batch_size: int = 8) -> float:
    """Perplexity over non-overlapping windows of `context` tokens from the start of `data`.

    Every token of every window is scored, so the result covers the same tokens for any
    `context` that divides the span; this is how val perplexity at 1x and 2x the training
    context are compared (length extrapolation).
    """
    device = next(model.parameters()).device
    n_windows = min((len(data) - 1) // context, max(1, max_tokens // context))
    if n_windows < 1:
        raise ValueError(f"{len(data)} validation tokens is too few for a window of {context}")
    was_training = model.training
    model.eval()
    nll_sum, count = 0.0, 0
    for first in range(0, n_windows, batch_size):
        starts = range(first * context, min(n_windows, first + batch_size) * context, context)
        x = torch.stack([data[s: s + context] for s in starts]).to(device)
        y = torch.stack([data[s + 1: s + 1 + context] for s in starts]).to(device)
        logits, _ = model(x)
        nll = token_nll(logits, y)
        nll_sum += nll.sum().item()
        count += nll.numel()
    model.train(was_training)
    return perplexity(nll_sum / count)
