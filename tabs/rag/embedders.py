"""The embedder and the optional cross-encoder reranker, loaded through the studio's model
manager (measured, pinned while a request uses them, evicted LRU when another tab needs room).

Both come from a profile choice (hub id for real users, a local folder offline) or any local
folder a user points at. The ingest job process loads its own copy with `load_embedder`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

EMBED_BATCH = 16  # on CPU, larger batches of ~100-token chunks are slower (cache, padding)


# ----- CPU threads -------------------------------------------------------------------------------
# torch's CPU threads meet at a barrier after every operation and, by default, spin while they
# wait. When every core runs one of them and anything else wants a core (another tab, a browser,
# a test run), they wait on the thread that was preempted, at every layer: on a busy 2-core
# machine a 10-word query took 0.7 s to embed and 1.6 s to rerank with 2 threads, against 10 and
# 30-100 ms with one, and batch embedding ran 3-7x slower. So the RAG tab leaves cores free.
def query_threads(cpus: int | None = None) -> int:
    """Threads for one query's embedding and rerank: a quarter of the cores, 1 to 4 (the
    matrices of one query are small: a second thread bought under 10 ms on an idle 2-core
    machine, and cost a second when the machine was busy)."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(4, cpus // 4))


def batch_threads(cpus: int | None = None) -> int:
    """Threads for embedding a batch of chunks (ingest): every core but one, as cheap insurance
    against the stall above; every core on a 1-2 core machine (where one core is half the
    speed: 108 against 197 chunks/s on an idle 2-core machine), and when the process was started
    with ``OMP_WAIT_POLICY=passive`` (waiting threads then sleep and give their core back)."""
    cpus = cpus or os.cpu_count() or 1
    if cpus <= 2 or os.environ.get("OMP_WAIT_POLICY", "").lower() == "passive":
        return cpus
    return cpus - 1


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` torch CPU threads in the calling thread, then restore the count.

    torch keeps the count per OS thread once a thread has used it (OpenMP), so this does not
    change other request threads already running torch (a thread making its first torch call
    during the block starts with `n`). None: leave the count as it is.
    """
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _key(kind: str, source: str, named: str = "") -> str:
    """The model manager's key: named by what the user chose, unique per folder loaded."""
    what = source if not named or named == source else f"{named}|{source}"
    digest = hashlib.sha1(what.encode()).hexdigest()[:8]
    return f"rag:{kind}:{Path(named or source).name}:{digest}"


def _estimate(source: str) -> int:
    p = Path(source)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.glob("*.safetensors")) + \
            sum(f.stat().st_size for f in p.glob("*.bin"))
    return 0


def cpu_bf16() -> bool:
    """Whether this CPU does bfloat16 math natively (AVX512-BF16/AMX): then small encoders run
    about 2.5x faster in bf16, with vectors within 1e-3 cosine of float32."""
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _half_precision(model: Any, device: str) -> Any:
    import torch

    if device.startswith("cuda"):
        return model.to(torch.float16)
    if device == "cpu" and cpu_bf16():
        return model.to(torch.bfloat16)
    return model


def load_embedder(source: str, device: str = "cpu") -> Any:
    """A SentenceTransformer from a hub id or a local folder, in half precision where the
    device computes it natively."""
    from sentence_transformers import SentenceTransformer

    return _half_precision(SentenceTransformer(source, device=device), device)


def load_reranker(source: str, device: str = "cpu") -> Any:
    """A CrossEncoder (sigmoid scores in 0..1) from a hub id or a local folder."""
    from sentence_transformers import CrossEncoder

    # 256 tokens hold a whole default chunk (1000 characters) of prose; longer pairs padded a
    # whole batch and made the slow tail of a query.
    return _half_precision(CrossEncoder(source, device=device, max_length=256), device)


def register_embedder(studio: Any, source: str, title: str = "", named: str = "") -> str:
    """Register the embedder with the model manager once; returns its key. `source` is what is
    loaded (a folder on disk); `named`, if given, what the user chose (a hub id), which names
    the key, so the same model keeps one key wherever its files are."""
    return _register(studio, "embedder", source, load_embedder, title, 128 * 1024**2, named)


def register_reranker(studio: Any, source: str, title: str = "", named: str = "") -> str:
    """Register the cross-encoder reranker with the model manager once; returns its key."""
    return _register(studio, "reranker", source, load_reranker, title, 256 * 1024**2, named)


def _register(studio: Any, kind: str, source: str, loader: Any, title: str,
              cuda_reserve: int, named: str = "") -> str:
    from studio.models import ModelSpec, PinnedSwap

    key = _key(kind, source, named)
    return studio.models.ensure(key, lambda: ModelSpec(
        key=key, load=lambda device: loader(source, device),
        title=title or f"{kind} {Path(named or source).name}", estimate=_estimate(source),
        reserve=cuda_reserve if studio.probe.device == "cuda" else 0,
        **PinnedSwap().spec_kwargs()))  # warm tier: pinned CPU copy


def encode(model: Any, texts: list[str], batch_size: int = EMBED_BATCH) -> np.ndarray:
    """Unit-length float32 vectors (cosine = dot product), in batches."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    vecs = model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                        show_progress_bar=False)
    vecs = np.asarray(vecs, dtype=np.float32)  # normalized in float32, whatever the model ran in
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


def rerank_scores(model: Any, query: str, texts: list[str]) -> np.ndarray:
    if not texts:
        return np.zeros(0, dtype=np.float32)
    # predict() sorts pairs by length: small batches of alike lengths pad little
    scores = model.predict([(query, t) for t in texts], batch_size=8, show_progress_bar=False)
    return np.asarray(scores, dtype=np.float32).reshape(-1)
