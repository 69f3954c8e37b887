"""A process that ingests a folder into a knowledge base and may be killed (SIGKILL) at a
chosen point (``STUDIO_CRASH_AT=rag.after_upsert:2``): the crash tests' stand-in for a studio
killed mid-ingest. Vectors come from a hashing bag of words, so search works without a model.

    python -m tests.jobs.rag_crash_child INDEXES_DIR FOLDER [delete PATH]
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

DIM = 64
PER_BATCH = 3  # documents per knowledge-base write: 9 files are 3 batches


def encode(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), DIM), np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().split():
            out[i, int(hashlib.md5(w.strip(".,:").encode()).hexdigest(), 16) % DIM] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def open_kb(indexes_dir: Path):
    from tabs.rag.index import KnowledgeBase, open_client

    client = open_client(SimpleNamespace(indexes_dir=indexes_dir, chroma_url=None))
    return KnowledgeBase("notes", indexes_dir / "rag", client, embedder="bag of words")


def ingest(kb, folder: Path):
    from tabs.rag import ingest as ing

    saved, ing.APPLY_DOCS = ing.APPLY_DOCS, PER_BATCH  # small writes, so there are steps
    try:  # to crash between; restored, since the tests also call this in their own process
        prep = ing.prepare(ing.gather(folder=folder), kb.known_hashes(),
                           folder_prefix=f"{folder.name}/")
        return ing.apply(kb, prep, ing.embed_prepared(prep, encode, group=4))
    finally:
        ing.APPLY_DOCS = saved


def main(argv: list[str]) -> int:
    kb = open_kb(Path(argv[0]))
    if len(argv) > 2 and argv[2] == "delete":
        kb.delete_source(argv[3])
    else:
        ingest(kb, Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
