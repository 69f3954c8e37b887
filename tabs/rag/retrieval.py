"""Hybrid retrieval: vector (Chroma) + BM25 candidates, fused by reciprocal rank (RRF), then an
optional cross-encoder rerank, then top-k. Every hit carries its cosine similarity to the
question, which is what "nothing relevant found" is decided on (or the reranker's score when it
is on)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tabs.rag.config import RetrievalConfig
from tabs.rag.index import ChunkRecord, KnowledgeBase, embed_text

EmbedQuery = Callable[[str], np.ndarray]
Rerank = Callable[[str, list[str]], np.ndarray]


@dataclass
class Hit:
    chunk: ChunkRecord
    score: float  # what the final order is by: RRF score, or the reranker's
    similarity: float  # cosine between question and chunk
    vector_rank: int | None = None  # 1-based rank in each list, None when not in it
    bm25_rank: int | None = None
    rerank_score: float | None = None
    relevant: bool = False

    def as_dict(self) -> dict:
        c = self.chunk
        # "file", not "path": gradio_client would take a dict with "path" for a file to fetch
        return {"id": c.id, "file": c.path, "heading": c.heading, "start_line": c.start_line,
                "end_line": c.end_line, "text": c.text, "score": round(self.score, 4),
                "similarity": round(self.similarity, 4), "vector_rank": self.vector_rank,
                "bm25_rank": self.bm25_rank, "relevant": self.relevant,
                "rerank_score": None if self.rerank_score is None else
                round(self.rerank_score, 4)}


@dataclass
class SearchResult:
    query: str
    hits: list[Hit]
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def relevant(self) -> list[Hit]:
        return [h for h in self.hits if h.relevant]


def rrf(rankings: list[list[str]], k: int = 60) -> list[tuple[str, float]]:
    """Reciprocal rank fusion: sum of 1/(k + rank) over the lists an id appears in."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, cid in enumerate(ranking, 1):
            scores[cid] = scores.get(cid, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def search(kb: KnowledgeBase, query: str, cfg: RetrievalConfig, embed_query: EmbedQuery,
           rerank: Rerank | None = None) -> SearchResult:
    """Find the top-k chunks for `query`. `rerank` is used only when ``cfg.rerank``."""
    cfg.validate()
    query = (query or "").strip()
    if not query:
        raise ValueError("ask a question first")
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    qv = np.asarray(embed_query(query), dtype=np.float32).reshape(-1)
    t["embed"] = _ms(t0)
    t0 = time.perf_counter()
    vec = kb.vector_search(qv, cfg.candidates)
    t["vector"] = _ms(t0)
    records = {r.id: r for r, _ in vec}
    sims = {r.id: s for r, s in vec}
    vec_rank = {r.id: i for i, (r, _) in enumerate(vec, 1)}
    lex_rank: dict[str, int] = {}
    if cfg.hybrid:
        t0 = time.perf_counter()
        lex = kb.bm25().search(query, cfg.candidates)
        lex_rank = {cid: i for i, (cid, _) in enumerate(lex, 1)}
        t["bm25"] = _ms(t0)
        fused = rrf([[r.id for r, _ in vec], [cid for cid, _ in lex]], cfg.rrf_k)
    else:
        fused = [(r.id, 1.0 / (cfg.rrf_k + i)) for i, (r, _) in enumerate(vec, 1)]
    fused = fused[:cfg.candidates]
    missing = [cid for cid, _ in fused if cid not in records]
    if missing:  # lexical-only candidates: fetch text and vectors to know their similarity
        t0 = time.perf_counter()
        recs, vecs = kb.get_chunks(missing, with_vectors=True)
        for r, v in zip(recs, vecs if vecs is not None else [], strict=True):
            records[r.id] = r
            sims[r.id] = float(np.dot(v, qv))
        t["fetch"] = _ms(t0)
    hits = [Hit(chunk=records[cid], score=score, similarity=sims.get(cid, 0.0),
                vector_rank=vec_rank.get(cid), bm25_rank=lex_rank.get(cid))
            for cid, score in fused if cid in records]
    if cfg.rerank and rerank is not None and hits:
        t0 = time.perf_counter()
        texts = [embed_text(h.chunk.path, h.chunk.heading, h.chunk.text) for h in hits]
        scores = rerank(query, texts)
        for h, s in zip(hits, scores, strict=True):
            h.rerank_score = h.score = float(s)
        hits.sort(key=lambda h: -h.score)
        t["rerank"] = _ms(t0)
    for h in hits:
        if h.rerank_score is not None:
            h.relevant = h.rerank_score >= cfg.min_rerank_score
        else:
            h.relevant = h.similarity >= cfg.min_similarity
    t["total"] = sum(t.values())
    return SearchResult(query=query, hits=hits[:cfg.top_k], timings_ms=t)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
