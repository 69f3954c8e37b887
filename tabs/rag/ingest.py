"""Ingest: gather files, skip what is unchanged or unusable, chunk, embed in batches, store.

The same three steps run in a request (small ingests) or in a background job (big folders):
`prepare` (read, hash, chunk: no model), `embed_prepared` (batched, with progress), and
`apply` (write to the knowledge base). A job runs the first two in its own process and saves
the result in its run folder; the app applies it (`apply_saved`), so the vector store keeps a
single writer. A cancelled job keeps the files it finished; resuming it does the rest, because
files already indexed with the same content hash are skipped as unchanged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tabs.rag.chunking import Chunk, chunk_document
from tabs.rag.config import IngestLimits
from tabs.rag.index import KnowledgeBase, embed_text
from tabs.rag.loaders import (
    Document,
    RawFile,
    Skipped,
    files_from_folder,
    files_from_paths,
    load_document,
)

Progress = Callable[[int, int, str], None]
APPLY_DOCS = 500  # documents per knowledge-base write (bounds the memory of one Chroma add)


@dataclass
class Prepared:
    """What an ingest will do, before any embedding."""

    docs: list[tuple[Document, list[Chunk]]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # gone from a re-ingested folder

    @property
    def chunk_total(self) -> int:
        return sum(len(c) for _, c in self.docs)


@dataclass
class IngestResult:
    """Shown after an ingest: what was indexed, left alone, skipped (with reasons), removed."""

    indexed: list[tuple[str, int]] = field(default_factory=list)  # (path, chunks)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    removed: list[str] = field(default_factory=list)
    chunks: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # read, model, embed, store
    run_id: str | None = None  # set when it went to a background job

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def gather(paths: Iterable[str | Path] = (), folder: Path | None = None,
           limits: IngestLimits | None = None) -> list[RawFile | Skipped]:
    """Uploaded files and zips, and/or every file under a folder (already checked to be inside
    the studio home)."""
    limits = limits or IngestLimits()
    items: list[RawFile | Skipped] = list(files_from_paths([Path(p) for p in paths], limits))
    if folder is not None:
        items += list(files_from_folder(folder, limits))
    return items


def prepare(items: Iterable[RawFile | Skipped], known: dict[str, str],
            limits: IngestLimits | None = None, folder_prefix: str | None = None) -> Prepared:
    """Decode and chunk each file; files whose content hash is already indexed are unchanged.

    `known` maps indexed paths to their hashes. With `folder_prefix`, indexed sources under
    that prefix that are no longer in the folder are marked for removal.
    """
    limits = limits or IngestLimits()
    out = Prepared()
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            out.skipped.append(Skipped(item.name, "the same path appears twice in this ingest; "
                                                  "the first copy was used"))
            continue
        seen.add(item.name)
        if isinstance(item, Skipped):
            out.skipped.append(item)
            continue
        doc = load_document(item)
        if isinstance(doc, Skipped):
            out.skipped.append(doc)
            continue
        if known.get(doc.name) == doc.hash:
            out.unchanged.append(doc.name)
            continue
        chunks = chunk_document(doc, limits.max_chunk_chars, limits.overlap_lines)
        if not chunks:
            out.skipped.append(Skipped(doc.name, "no text to index (only blank lines)"))
            continue
        out.docs.append((doc, chunks))
    if folder_prefix:
        out.removed = sorted(p for p in known if p.startswith(folder_prefix) and p not in seen)
    return out


def embed_prepared(prep: Prepared, encode: Callable[[list[str]], np.ndarray],
                   group: int = 1024, progress: Progress | None = None,
                   should_stop: Callable[[], bool] | None = None) -> list[np.ndarray]:
    """One vector array per document, embedding all chunks in batches across files (small
    files share batches: this is where batching beats one-call-per-chunk). `encode` gets
    `group` texts at a time, which it sorts by length into batches of alike lengths. Stops
    between groups when asked; documents not finished then get no vectors (the list is
    shorter)."""
    texts: list[str] = []
    owner: list[int] = []
    for k, (doc, chunks) in enumerate(prep.docs):
        for c in chunks:
            texts.append(embed_text(doc.name, c.heading, c.text))
            owner.append(k)
    total = len(texts)
    parts: list[np.ndarray] = []
    done = 0
    for i in range(0, total, group):
        if should_stop is not None and should_stop():
            break
        parts.append(encode(texts[i:i + group]))
        done = min(total, i + group)
        if progress is not None:
            progress(done, total, f"embedded {done} of {total} chunks")
    if not parts:
        return []
    vectors = np.concatenate(parts)
    out = []
    start = 0
    for _, chunks in prep.docs:
        end = start + len(chunks)
        if end > done:
            break
        out.append(vectors[start:end])
        start = end
    return out


def apply(kb: KnowledgeBase, prep: Prepared, vectors: list[np.ndarray]) -> IngestResult:
    """Write prepared documents (those with vectors), skips and removals to the knowledge base.

    Each write of `APPLY_DOCS` documents saves the manifest, so a crash keeps the batches
    before it; applying the same result again is harmless (ids are upserted)."""
    res = IngestResult(unchanged=list(prep.unchanged))
    with kb.batch():
        # zip stops at the last document with vectors (a cancelled job finished fewer)
        done = [(doc, chunks, vecs) for (doc, chunks), vecs in
                zip(prep.docs, vectors, strict=False)]
        for i in range(0, len(done), APPLY_DOCS):  # a few Chroma commits, not one per file
            res.chunks += kb.put_documents(done[i:i + APPLY_DOCS])
        res.indexed = [(doc.name, len(chunks)) for doc, chunks, _ in done]
        res.skipped = [(s.name, s.reason) for s in prep.skipped]
        # ignored folders are reported, not listed as sources
        kb.record_skips([(s.name, s.reason) for s in prep.skipped if not s.name.endswith("/")])
        res.removed = [r.path for r in kb.delete_sources(prep.removed)]
    return res


# ----- saving a job's result -----------------------------------------------------------------
def save_prepared(folder: Path, prep: Prepared, vectors: list[np.ndarray]) -> None:
    """Write what a job computed, for the app to apply. ``done.json`` is written last."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as f:
        for doc, chunks in prep.docs[:len(vectors)]:
            f.write(json.dumps({"doc": asdict(doc), "chunks": [asdict(c) for c in chunks]})
                    + "\n")
    arr = np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32)
    np.save(folder / "vectors.npy", arr)
    (folder / "done.json").write_text(json.dumps({
        "unchanged": prep.unchanged, "removed": prep.removed,
        "skipped": [asdict(s) for s in prep.skipped],
        "not_finished": [d.name for d, _ in prep.docs[len(vectors):]],
    }))


def load_saved(folder: Path) -> tuple[Prepared, list[np.ndarray]] | None:
    if not (folder / "done.json").exists():
        return None
    meta = json.loads((folder / "done.json").read_text())
    prep = Prepared(unchanged=meta["unchanged"], removed=meta["removed"],
                    skipped=[Skipped(**s) for s in meta["skipped"]])
    with open(folder / "docs.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            prep.docs.append((Document(**row["doc"]), [Chunk(**c) for c in row["chunks"]]))
    arr = np.load(folder / "vectors.npy")
    vectors, start = [], 0
    for _, chunks in prep.docs:
        vectors.append(arr[start:start + len(chunks)])
        start += len(chunks)
    return prep, vectors


# ----- the background job ----------------------------------------------------------------------
def run(config: dict[str, Any], report: Any) -> None:
    """Job entry ``tabs.rag.ingest:run``: read, chunk and embed; the app stores the result.

    config: kb_dir, paths, folder (or None), folder_prefix, embedder, limits.
    """
    from tabs.rag.embedders import batch_threads, encode, load_embedder, torch_threads

    limits = IngestLimits(**config.get("limits", {}))
    out = Path(report.run_dir) / "ingest"
    if out.exists():  # a resumed run starts over; files it already stored are now unchanged
        import shutil

        shutil.rmtree(out)
    manifest = json.loads((Path(config["kb_dir"]) / "manifest.json").read_text())
    known = {p: r["hash"] for p, r in manifest["sources"].items() if r["status"] == "indexed"}
    report.progress(0, None, "reading files")
    folder = Path(config["folder"]) if config.get("folder") else None
    items = gather(config.get("paths", []), folder, limits)
    prep = prepare(items, known, limits, config.get("folder_prefix"))
    report.log(f"{len(prep.docs)} files to index ({prep.chunk_total} chunks), "
               f"{len(prep.unchanged)} unchanged, {len(prep.skipped)} skipped")
    for s in prep.skipped:
        report.log(f"skipped {s.name}: {s.reason}")
    device = "cuda" if _cuda() else "cpu"
    model = load_embedder(config["embedder"], device)
    t0 = time.perf_counter()

    def progress(done: int, total: int, msg: str) -> None:
        report.progress(done, total, msg)
        report.metrics(done, chunks_per_s=done / max(time.perf_counter() - t0, 1e-9))

    with torch_threads(batch_threads()):  # a core stays free for the app and the machine
        vectors = embed_prepared(prep, lambda t: encode(model, t), progress=progress,
                                 should_stop=report.should_stop)
    save_prepared(out, prep, vectors)
    report.artifact(out / "done.json", kind="file", label="ingest summary")
    report.log(f"embedded {sum(len(v) for v in vectors)} chunks in "
               f"{time.perf_counter() - t0:.1f} s; the app adds them to the index")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
