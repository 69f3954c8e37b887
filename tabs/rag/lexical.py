"""BM25 lexical search over a knowledge base's chunks, with bm25s (sparse matrices, fast).

Identifiers are split for code (``parse_config`` and ``parseConfig`` also index ``parse`` and
``config``), so a question in words finds the function that does it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def split_words(text: str) -> list[str]:
    """Lower-cased words, plus the parts of snake_case and camelCase identifiers."""
    out: list[str] = []
    for w in _WORD.findall(text):
        low = w.lower()
        if len(low) > 1 or low.isdigit():  # "pier 7": numbers matter in notes
            out.append(low)
        if "_" in w or (not w.islower() and not w.isupper()):
            parts = [p.lower() for piece in w.split("_") for p in _CAMEL.findall(piece)]
            if len(parts) > 1:
                out.extend(p for p in parts if len(p) > 1 or p.isdigit())
    return out


def _tokenizer():
    from bm25s.tokenization import Tokenizer

    return Tokenizer(lower=False, splitter=split_words, stopwords="en")


class Bm25Index:
    """BM25 over (id, text) pairs. Rebuilt when the knowledge base changes (`version` is its
    state key)."""

    def __init__(self, ids: list[str], retriever=None, tokenizer=None,
                 version: int | str = -1):
        self.ids = ids
        self.retriever = retriever
        self.tokenizer = tokenizer
        self.version = version

    @classmethod
    def build(cls, ids: list[str], texts: list[str], version: int | str = -1) -> Bm25Index:
        import bm25s

        if not ids:
            return cls([], None, None, version)
        tok = _tokenizer()
        tokens = tok.tokenize(texts, return_as="tuple", show_progress=False)
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        return cls(list(ids), retriever, tok, version)

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """Best (id, score) pairs with a positive score, best first."""
        if self.retriever is None or not self.ids or not split_words(query):
            return []
        q = self.tokenizer.tokenize([query], update_vocab=False, return_as="ids",
                                    show_progress=False)
        k = min(k, len(self.ids))
        docs, scores = self.retriever.retrieve(q, k=k, show_progress=False, n_threads=1)
        return [(self.ids[int(d)], float(s))
                for d, s in zip(docs[0], scores[0], strict=True) if s > 0]

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.retriever is not None:
            self.retriever.save(str(folder / "bm25"))
            self.tokenizer.save_vocab(str(folder / "bm25"))
        meta = {"version": self.version, "ids": self.ids}
        (folder / "index.json").write_text(json.dumps(meta))  # last: marks a complete save

    @classmethod
    def load(cls, folder: Path) -> Bm25Index | None:
        import bm25s

        f = Path(folder) / "index.json"
        if not f.exists():
            return None
        try:
            meta = json.loads(f.read_text())
            if not meta["ids"]:
                return cls([], None, None, meta["version"])
            retriever = bm25s.BM25.load(str(Path(folder) / "bm25"))
            tok = _tokenizer()
            tok.load_vocab(str(Path(folder) / "bm25"))
            return cls(meta["ids"], retriever, tok, meta["version"])
        except (OSError, ValueError, KeyError):
            return None


def scores_array(pairs: list[tuple[str, float]]) -> np.ndarray:
    return np.array([s for _, s in pairs], dtype=np.float32)
