"""Typed settings for the RAG tab: ingest limits, retrieval and answering. Defaults live here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

KIND = "rag_ingest"  # job kind of background ingests
KB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
IDK = "I don't know from your notes."


def check_kb_name(name: str) -> str:
    """A knowledge base name doubles as a folder and a Chroma collection name."""
    name = (name or "").strip()
    if not KB_NAME.match(name):
        raise ValueError(
            f"{name!r} is not a usable knowledge base name: use 1-63 letters, digits, '-' or '_', "
            "starting with a letter or digit")
    return name


@dataclass
class IngestLimits:
    """What an ingest accepts; anything outside is skipped with a reason, never fatal."""

    max_file_bytes: int = field(default=20 * 1024**2, metadata={"label": "Largest file"})
    max_zip_bytes: int = field(default=500 * 1024**2,
                               metadata={"label": "Largest total unpacked zip"})
    max_chunk_chars: int = field(default=1000, metadata={"label": "Chunk size (characters)"})
    overlap_lines: int = field(default=4, metadata={"label": "Overlap between line windows"})
    background_bytes: int = field(default=4 * 1024**2,
                                  metadata={"label": "Ingest as a background job above"})
    background_files: int = field(default=200,
                                  metadata={"label": "... or above this many files"})


@dataclass
class RetrievalConfig:
    """How to find passages for a question."""

    top_k: int = field(default=4, metadata={"label": "Passages (top-k)"})
    hybrid: bool = field(default=True, metadata={"label": "Hybrid (vector + BM25)"})
    rerank: bool = field(default=False, metadata={"label": "Cross-encoder reranker"})
    candidates: int = field(default=20, metadata={"label": "Candidates before fusion/rerank"})
    min_similarity: float = field(
        default=0.35, metadata={"label": "Relevance floor (cosine)",
                               "info": "below this nothing counts as found"})
    min_rerank_score: float = field(default=0.02, metadata={"label": "Relevance floor (rerank)"})
    rrf_k: int = 60

    def validate(self) -> RetrievalConfig:
        if not 1 <= self.top_k <= 50:
            raise ValueError("top-k must be between 1 and 50")
        self.candidates = max(self.candidates, self.top_k)
        return self


@dataclass
class AnswerConfig:
    """How the LLM answers from the passages."""

    max_new_tokens: int = field(default=256, metadata={"label": "Max new tokens"})
    temperature: float = field(default=0.0, metadata={"label": "Temperature"})
    use_tools: bool = field(default=False, metadata={
        "label": "Let the model call tools (search_notes, read_source)"})
    history_turns: int = 4  # earlier user/assistant pairs kept in the prompt
