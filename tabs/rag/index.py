"""Knowledge bases: vectors in ChromaDB, plus a small manifest and the indexed texts on disk.

Chroma is the embedded `PersistentClient` under ``settings.indexes_dir`` by default, or a Chroma
server (`HttpClient`) when ``settings.chroma_url`` is set. Only the app process writes to it
(background ingest jobs compute chunks and vectors and the app adds them), so the embedded store
never has two writers. Each knowledge base keeps, in ``indexes_dir/rag/<name>/``:

- ``manifest.json``: one record per source (content hash, chunk count, status or skip reason),
  the embedder it was built with, and a version bumped on every change;
- ``texts/<hash>.txt``: the text that was indexed (what citations and `read_source` show, even
  after an uploaded temp file is gone);
- ``bm25/``: the lexical index, rebuilt lazily when the version moved.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from tabs.rag.chunking import Chunk
from tabs.rag.config import check_kb_name
from tabs.rag.lexical import Bm25Index
from tabs.rag.loaders import Document

MAX_READ_LINES = 200  # what read_source hands the model at once


@dataclass
class SourceRecord:
    """One row of the sources table."""

    path: str
    status: str  # indexed | skipped
    kind: str = ""
    hash: str = ""
    chunks: int = 0
    lines: int = 0
    size: int = 0
    reason: str = ""
    encoding: str = ""
    updated: float = field(default_factory=time.time)


@dataclass
class ChunkRecord:
    """A chunk as stored: what retrieval returns and citations show."""

    id: str
    path: str
    heading: str
    start_line: int
    end_line: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.start_line}-{self.end_line}"


def open_client(settings: Any) -> Any:
    """The Chroma client the settings ask for (server URL or embedded folder)."""
    import chromadb

    chroma_settings = chromadb.Settings(anonymized_telemetry=False)
    url = getattr(settings, "chroma_url", None)
    if url:
        u = urlparse(url if "://" in url else f"http://{url}")
        if not u.hostname:
            raise ValueError(f"not a Chroma server URL: {url!r} (try http://127.0.0.1:8000)")
        return chromadb.HttpClient(host=u.hostname, port=u.port or 8000,
                                   ssl=u.scheme == "https", settings=chroma_settings)
    path = Path(settings.indexes_dir) / "chroma"
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=chroma_settings)


def chunk_id(path: str, n: int) -> str:
    return f"{hashlib.sha1(path.encode()).hexdigest()[:16]}-{n}"


def embed_text(path: str, heading: str, text: str) -> str:
    """What is embedded and BM25-indexed: the chunk with its file and heading, so questions that
    name a file or a section find it."""
    head = f"{path} · {heading}" if heading else path
    return f"{head}\n{text}"


class KnowledgeBase:
    """One named collection of sources. Writes are serialized by a lock; reads are not."""

    def __init__(self, name: str, root: Path, client: Any, embedder: str):
        self.name = check_kb_name(name)
        self.dir = Path(root) / self.name
        self.client = client
        self._lock = threading.RLock()
        self._bm25: Bm25Index | None = None
        self._deferred = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "texts").mkdir(exist_ok=True)
        self.manifest = self._read_manifest(embedder)
        self.collection = client.get_or_create_collection(
            f"rag-{self.name}-v1", embedding_function=None,
            configuration={"hnsw": {"space": "cosine"}}, metadata={"kb": self.name})

    # ----- manifest ---------------------------------------------------------------------------
    def _read_manifest(self, embedder: str) -> dict[str, Any]:
        f = self.dir / "manifest.json"
        if f.exists():
            m = json.loads(f.read_text())
            m["sources"] = {p: SourceRecord(**r) for p, r in m["sources"].items()}
            return m
        m = {"name": self.name, "embedder": embedder, "version": 0, "created": time.time(),
             "sources": {}}
        self._write_manifest(m)
        return m

    def _write_manifest(self, m: dict[str, Any] | None = None) -> None:
        m = m or self.manifest
        data = dict(m, sources={p: asdict(r) for p, r in m["sources"].items()})
        tmp = self.dir / "manifest.json.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.dir / "manifest.json")

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def embedder(self) -> str:
        return str(self.manifest["embedder"])

    def _bump(self) -> None:
        self.manifest["version"] += 1
        if not self._deferred:
            self._write_manifest()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Many writes, one manifest save (a folder of thousands of files)."""
        with self._lock:
            self._deferred += 1
            try:
                yield
            finally:
                self._deferred -= 1
                if not self._deferred:
                    self._write_manifest()

    def sources(self) -> list[SourceRecord]:
        return sorted(self.manifest["sources"].values(), key=lambda r: (r.status, r.path))

    def source(self, path: str) -> SourceRecord | None:
        return self.manifest["sources"].get(path)

    def known_hashes(self) -> dict[str, str]:
        return {p: r.hash for p, r in self.manifest["sources"].items() if r.status == "indexed"}

    def chunk_count(self) -> int:
        return int(self.collection.count())

    # ----- writes -----------------------------------------------------------------------------
    def put_document(self, doc: Document, chunks: list[Chunk], vectors: np.ndarray) -> int:
        """Index (or replace) one document's chunks. Returns how many were stored."""
        return self.put_documents([(doc, chunks, vectors)])

    def put_documents(self, items: list[tuple[Document, list[Chunk], np.ndarray]]) -> int:
        """Index (or replace) many documents with one delete and as few adds as Chroma's batch
        limit allows. Each Chroma call is a commit: one per file made storing a folder of small
        notes cost as much as embedding it. Returns how many chunks were stored."""
        names = [doc.name for doc, _, _ in items]
        if len(set(names)) != len(names):
            raise ValueError("the same document twice in one write")
        for _, chunks, vectors in items:
            if len(chunks) != len(vectors):
                raise ValueError("one vector per chunk")
        with self._lock:
            self._delete_chunks(*names)
            ids: list[str] = []
            metas: list[dict[str, Any]] = []
            docs: list[str] = []
            for doc, chunks, _ in items:
                ids += [chunk_id(doc.name, n) for n in range(len(chunks))]
                metas += [{"path": doc.name, "heading": c.heading, "start_line": c.start_line,
                           "end_line": c.end_line, "kind": doc.kind, "hash": doc.hash}
                          for c in chunks]
                docs += [c.text for c in chunks]
            if ids:
                vecs = np.concatenate([np.asarray(v, dtype=np.float32).reshape(len(c), -1)
                                       for _, c, v in items if len(c)])
                batch = self._max_batch()
                for i in range(0, len(ids), batch):
                    self.collection.add(ids=ids[i:i + batch], embeddings=vecs[i:i + batch],
                                        documents=docs[i:i + batch],
                                        metadatas=metas[i:i + batch])
            for doc, chunks, _ in items:
                (self.dir / "texts" / f"{doc.hash}.txt").write_text(doc.text, encoding="utf-8")
                self.manifest["sources"][doc.name] = SourceRecord(
                    path=doc.name, status="indexed", kind=doc.kind, hash=doc.hash,
                    chunks=len(chunks), lines=doc.text.count("\n") + 1, size=doc.size,
                    encoding=doc.encoding)
            if items:
                self._bump()
            return len(ids)

    def _max_batch(self) -> int:
        return max(1, min(5000, int(self.client.get_max_batch_size())))

    def _delete_chunks(self, *paths: str) -> None:
        ids = []
        for path in paths:
            old = self.manifest["sources"].get(path)
            if old is not None and old.status == "indexed" and old.chunks:
                ids += [chunk_id(path, n) for n in range(old.chunks)]
        batch = self._max_batch()
        for i in range(0, len(ids), batch):
            self.collection.delete(ids=ids[i:i + batch])

    def record_skip(self, path: str, reason: str) -> None:
        """Remember why a file was not indexed (shown in the sources table). A skipped new
        version of an indexed file removes the old chunks: the notes changed, the index must
        not answer from the stale version."""
        with self._lock:
            self._delete_chunks(path)
            self.manifest["sources"][path] = SourceRecord(path=path, status="skipped",
                                                          reason=reason)
            self._bump()

    def delete_source(self, path: str) -> SourceRecord:
        with self._lock:
            rec = self.manifest["sources"].get(path)
            if rec is None:
                raise ValueError(f"no source {path!r} in knowledge base {self.name!r}")
            self._delete_chunks(path)
            del self.manifest["sources"][path]
            if rec.hash and not any(r.hash == rec.hash for r in self.manifest["sources"].values()):
                (self.dir / "texts" / f"{rec.hash}.txt").unlink(missing_ok=True)
            self._bump()
            return rec

    def drop(self) -> None:
        """Delete the whole knowledge base (collection and folder)."""
        with self._lock:
            try:
                self.client.delete_collection(self.collection.name)
            except Exception:  # already gone on the server
                pass
            shutil.rmtree(self.dir, ignore_errors=True)

    # ----- reads ------------------------------------------------------------------------------
    def get_chunks(self, ids: list[str], with_vectors: bool = False
                   ) -> tuple[list[ChunkRecord], np.ndarray | None]:
        """Chunks by id, in the order asked (missing ids are left out)."""
        if not ids:
            return [], None
        include = ["documents", "metadatas"] + (["embeddings"] if with_vectors else [])
        got = self.collection.get(ids=ids, include=include)
        pos = {cid: k for k, cid in enumerate(got["ids"])}
        order = [pos[i] for i in ids if i in pos]
        recs = [self._record(got["ids"][k], got["documents"][k], got["metadatas"][k])
                for k in order]
        vecs = None
        if with_vectors:
            vecs = np.asarray(got["embeddings"], dtype=np.float32)[order]
        return recs, vecs

    @staticmethod
    def _record(cid: str, doc: str, meta: dict[str, Any]) -> ChunkRecord:
        return ChunkRecord(id=cid, path=str(meta["path"]), heading=str(meta.get("heading", "")),
                           start_line=int(meta["start_line"]), end_line=int(meta["end_line"]),
                           text=doc or "")

    def vector_search(self, vector: np.ndarray, n: int
                      ) -> list[tuple[ChunkRecord, float]]:
        """(chunk, cosine similarity), best first. Chroma returns fewer than `n` when it holds
        fewer (no ``count()`` first: at 100k chunks that was 5-10 ms, more than the search)."""
        res = self.collection.query(query_embeddings=vector.reshape(1, -1), n_results=n,
                                    include=["documents", "metadatas", "distances"])
        return [(self._record(cid, doc, meta), 1.0 - float(dist)) for cid, doc, meta, dist in
                zip(res["ids"][0], res["documents"][0], res["metadatas"][0],
                    res["distances"][0], strict=True)]

    def bm25(self) -> Bm25Index:
        """The lexical index for the current version (loaded from disk or rebuilt)."""
        cached = self._bm25
        if cached is not None and cached.version == self.version:
            return cached
        with self._lock:
            if self._bm25 is not None and self._bm25.version == self.version:
                return self._bm25
            idx = Bm25Index.load(self.dir / "bm25")
            if idx is None or idx.version != self.version:
                idx = self._build_bm25()
                idx.save(self.dir / "bm25")
            self._bm25 = idx
            return idx

    def _build_bm25(self) -> Bm25Index:
        ids, texts = [], []
        page = 5000
        total = self.chunk_count()
        for offset in range(0, total, page):
            got = self.collection.get(include=["documents", "metadatas"], limit=page,
                                      offset=offset)
            for cid, doc, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True):
                ids.append(cid)
                texts.append(embed_text(meta["path"], meta.get("heading", ""), doc or ""))
        return Bm25Index.build(ids, texts, version=self.version)

    def read_lines(self, path: str, start: int, end: int) -> str:
        """Lines start..end (1-based, inclusive, at most MAX_READ_LINES) of an indexed source's
        text; a path may be given by its end (``setup.md``) when that is unambiguous."""
        rec = self.source(path)
        if rec is None or rec.status != "indexed":
            matches = [p for p, r in self.manifest["sources"].items()
                       if r.status == "indexed" and (p.endswith("/" + path) or p == path)]
            if len(matches) != 1:
                raise ValueError(f"no indexed source {path!r}")
            rec = self.manifest["sources"][matches[0]]
        lines = (self.dir / "texts" / f"{rec.hash}.txt").read_text(encoding="utf-8").split("\n")
        start = max(1, int(start))
        end = min(len(lines), max(start, int(end)), start + MAX_READ_LINES - 1)
        return "\n".join(lines[start - 1:end])


def list_kbs(root: Path) -> list[str]:
    root = Path(root)
    if not root.exists():
        return []
    return sorted(d.name for d in root.iterdir() if (d / "manifest.json").exists())
