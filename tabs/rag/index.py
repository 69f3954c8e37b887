"""Knowledge bases: vectors in ChromaDB, plus a small manifest and the indexed texts on disk.

Chroma is the embedded `PersistentClient` under ``settings.indexes_dir`` by default, or a Chroma
server (`HttpClient`) when ``settings.chroma_url`` is set. Only the app process writes to it
(background ingest jobs compute chunks and vectors and the app adds them), so the embedded store
never has two writers. Each knowledge base keeps, in ``indexes_dir/rag/<name>/``:

- ``manifest.json``: one record per source (content hash, chunk count, status or skip reason),
  the embedder it was built with, and a version bumped on every change;
- ``texts/<hash>.txt``: the text that was indexed (what citations and `read_source` show, even
  after an uploaded temp file is gone);
- ``bm25/``: the lexical index, rebuilt lazily when the sources changed.

Crash consistency: the manifest is the truth, and every write is ordered so that a crash at any
point leaves the vector store holding at most *extra* chunks, never stale ones the manifest
vouches for. A chunk's id carries its file's content hash; a write upserts the new chunks, then
saves the manifest (atomically), then deletes the chunks it replaced, and a delete saves the
manifest before it deletes chunks. Reads only return chunks whose path and hash the manifest
lists, so even between a crash and the repair nothing stale is served. ``writing.json`` marks a
write in progress; when a knowledge base is opened and finds it, `check()` repairs the store
(orphan chunks and texts removed, sources with missing chunks marked for re-ingest).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
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
DAMAGED = ("its chunks were missing from the index (a crash or an outside change); "
           "ingest it again")
log = logging.getLogger("studio.rag")


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


def chunk_id(path: str, n: int, content_hash: str = "") -> str:
    """The id of chunk `n` of `path`. With the content hash in it, a new version of a file
    never overwrites or collides with the old one's chunks (ids without it are the old
    scheme, still read and cleaned up)."""
    base = hashlib.sha1(path.encode()).hexdigest()[:16]
    return f"{base}-{content_hash[:16]}-{n}" if content_hash else f"{base}-{n}"


def _ids_of(rec: SourceRecord | None) -> list[str]:
    """Every id the chunks of `rec` may have (current and old scheme)."""
    if rec is None or rec.status != "indexed" or not rec.chunks:
        return []
    return [chunk_id(rec.path, n, rec.hash) for n in range(rec.chunks)] + \
        [chunk_id(rec.path, n) for n in range(rec.chunks)]


@dataclass
class CheckReport:
    """What `KnowledgeBase.check` found (and fixed, with repair)."""

    chunks: int = 0  # chunks in the vector store before the check
    orphans: int = 0  # chunks no source vouches for (removed)
    damaged: list[str] = field(default_factory=list)  # sources with missing chunks
    texts_removed: int = 0
    repaired: bool = False
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.orphans and not self.damaged and not self.texts_removed

    def summary(self) -> str:
        if self.clean:
            return f"Checked {self.chunks} chunks: the index and the sources agree."
        verb = "removed" if self.repaired else "found"
        parts = [f"{self.orphans} orphan chunk(s) {verb}"]
        if self.damaged:
            parts.append(f"{len(self.damaged)} source(s) with missing chunks "
                         f"{'marked to ingest again' if self.repaired else 'found'}: "
                         + ", ".join(self.damaged[:10]))
        if self.texts_removed:
            parts.append(f"{self.texts_removed} unused text file(s) {verb}")
        return f"Checked {self.chunks} chunks: " + "; ".join(parts) + "."


def embed_text(path: str, heading: str, text: str) -> str:
    """What is embedded and BM25-indexed: the chunk with its file and heading, so questions that
    name a file or a section find it."""
    head = f"{path} · {heading}" if heading else path
    return f"{head}\n{text}"


class KnowledgeBase:
    """One named collection of sources. Writes are serialized by this knowledge base's own lock
    (another knowledge base never waits for it); reads are not locked."""

    def __init__(self, name: str, root: Path, client: Any, embedder: str,
                 owner: str | None = None):
        self.name = check_kb_name(name)
        self.owner = owner  # None: a shared knowledge base (see RagService)
        self.dir = Path(root) / self.name
        self.client = client
        self._lock = threading.RLock()
        self._bm25_lock = threading.Lock()
        self._bm25: Bm25Index | None = None
        self._state_key: str | None = None
        self._writing = 0
        self._crash_hits: dict[str, int] = {}
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "texts").mkdir(exist_ok=True)
        self.manifest = self._read_manifest(embedder)
        self.collection = client.get_or_create_collection(
            collection_name(self.name, owner), embedding_function=None,
            configuration={"hnsw": {"space": "cosine"}},
            metadata={"kb": self.name, "owner": owner or ""})
        self.last_repair: CheckReport | None = None
        if self._journal.exists():  # the last write did not finish: make the store agree
            self.last_repair = self.check(repair=True)
            log.warning("knowledge base %s: an interrupted write was repaired: %s", self.name,
                        self.last_repair.summary())

    # ----- manifest ---------------------------------------------------------------------------
    def _read_manifest(self, embedder: str) -> dict[str, Any]:
        f = self.dir / "manifest.json"
        if f.exists():
            m = json.loads(f.read_text())
            m["sources"] = {p: SourceRecord(**r) for p, r in m["sources"].items()}
            return m
        m = {"name": self.name, "embedder": embedder, "version": 0, "created": time.time(),
             "owner": self.owner, "sources": {}}
        self._write_manifest(m)
        return m

    def _write_manifest(self, m: dict[str, Any] | None = None) -> None:
        m = m or self.manifest
        data = dict(m, sources={p: asdict(r) for p, r in m["sources"].items()})
        _write_durably(self.dir / "manifest.json", json.dumps(data, indent=1))
        self._state_key = None

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def embedder(self) -> str:
        return str(self.manifest["embedder"])

    @property
    def state_key(self) -> str:
        """A digest of what the manifest says is indexed: the lexical index is rebuilt when it
        moves (a version number alone can repeat after a crash lost an unsaved bump)."""
        key = self._state_key
        if key is None:
            h = hashlib.sha1()
            for p in sorted(self.manifest["sources"]):
                r = self.manifest["sources"][p]
                if r.status == "indexed":
                    h.update(f"{p}\0{r.hash}\0{r.chunks}\n".encode())
            key = self._state_key = h.hexdigest()
        return key

    def _save(self) -> None:
        self.manifest["version"] += 1
        self._write_manifest()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Many writes under one hold of the lock (kept for callers; each write saves the
        manifest itself, which is what makes a crash between writes harmless)."""
        with self._lock:
            yield

    @property
    def _journal(self) -> Path:
        return self.dir / "writing.json"

    @contextmanager
    def _write(self, op: str) -> Iterator[None]:
        """Mark a write in progress on disk (before the first change to the vector store) and
        clear the mark after the last one; an opened knowledge base with the mark repairs."""
        with self._lock:
            if not self._writing:
                _write_durably(self._journal, json.dumps({"op": op, "t": time.time(),
                                                          "pid": os.getpid()}))
            self._writing += 1
            try:
                yield
            finally:
                self._writing -= 1
                if not self._writing:
                    self._journal.unlink(missing_ok=True)

    def _crash_point(self, name: str) -> None:
        """Fault injection for the crash tests: ``STUDIO_CRASH_AT=name:N`` kills this process
        (SIGKILL, as a power cut or the OOM killer would) the N-th time it passes `name`."""
        want = os.environ.get("STUDIO_CRASH_AT")
        if not want:
            return
        point, _, nth = want.partition(":")
        if point != name:
            return
        self._crash_hits[name] = self._crash_hits.get(name, 0) + 1
        if self._crash_hits[name] >= int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)

    def sources(self) -> list[SourceRecord]:
        return sorted(self.manifest["sources"].values(), key=lambda r: (r.status, r.path))

    def source(self, path: str) -> SourceRecord | None:
        return self.manifest["sources"].get(path)

    def known_hashes(self) -> dict[str, str]:
        return {p: r.hash for p, r in self.manifest["sources"].items() if r.status == "indexed"}

    def chunk_count(self) -> int:
        return int(self.collection.count())

    def _vouched(self, meta: dict[str, Any] | None) -> bool:
        """True when the manifest lists this chunk's file at this chunk's content hash."""
        if not meta:
            return False
        rec = self.manifest["sources"].get(meta.get("path"))
        return rec is not None and rec.status == "indexed" and rec.hash == meta.get("hash")

    # ----- writes -----------------------------------------------------------------------------
    def put_document(self, doc: Document, chunks: list[Chunk], vectors: np.ndarray) -> int:
        """Index (or replace) one document's chunks. Returns how many were stored."""
        return self.put_documents([(doc, chunks, vectors)])

    def put_documents(self, items: list[tuple[Document, list[Chunk], np.ndarray]]) -> int:
        """Index (or replace) many documents with as few Chroma calls as its batch limit allows
        (each call is a commit: one per file made storing a folder of small notes cost as much
        as embedding it). Order: texts and new chunks (upserted, ids with the content hash),
        then the manifest, then the replaced chunks are deleted. Returns how many chunks were
        stored."""
        names = [doc.name for doc, _, _ in items]
        if len(set(names)) != len(names):
            raise ValueError("the same document twice in one write")
        for _, chunks, vectors in items:
            if len(chunks) != len(vectors):
                raise ValueError("one vector per chunk")
        if not items:
            return 0
        with self._write("put"):
            ids: list[str] = []
            metas: list[dict[str, Any]] = []
            docs: list[str] = []
            for doc, chunks, _ in items:
                ids += [chunk_id(doc.name, n, doc.hash) for n in range(len(chunks))]
                metas += [{"path": doc.name, "heading": c.heading, "start_line": c.start_line,
                           "end_line": c.end_line, "kind": doc.kind, "hash": doc.hash}
                          for c in chunks]
                docs += [c.text for c in chunks]
            for doc, _, _ in items:
                _write_durably(self.dir / "texts" / f"{doc.hash}.txt", doc.text, fsync=False)
            if ids:
                vecs = np.concatenate([np.asarray(v, dtype=np.float32).reshape(len(c), -1)
                                       for _, c, v in items if len(c)])
                batch = self._max_batch()
                for i in range(0, len(ids), batch):
                    self.collection.upsert(ids=ids[i:i + batch], embeddings=vecs[i:i + batch],
                                           documents=docs[i:i + batch],
                                           metadatas=metas[i:i + batch])
            self._crash_point("rag.after_upsert")
            old = [self.manifest["sources"].get(doc.name) for doc, _, _ in items]
            for doc, chunks, _ in items:
                self.manifest["sources"][doc.name] = SourceRecord(
                    path=doc.name, status="indexed", kind=doc.kind, hash=doc.hash,
                    chunks=len(chunks), lines=doc.text.count("\n") + 1, size=doc.size,
                    encoding=doc.encoding)
            self._save()
            self._crash_point("rag.after_manifest")
            keep = set(ids)
            self._delete_ids([i for rec in old for i in _ids_of(rec) if i not in keep])
            self._drop_unused_texts([r.hash for r in old if r is not None])
            self._crash_point("rag.after_batch")
            return len(ids)

    def _max_batch(self) -> int:
        return max(1, min(5000, int(self.client.get_max_batch_size())))

    def _delete_ids(self, ids: list[str]) -> None:
        batch = self._max_batch()
        for i in range(0, len(ids), batch):
            self.collection.delete(ids=ids[i:i + batch])

    def _drop_unused_texts(self, hashes: list[str]) -> None:
        used = {r.hash for r in self.manifest["sources"].values() if r.hash}
        for h in set(hashes) - used:
            if h:
                (self.dir / "texts" / f"{h}.txt").unlink(missing_ok=True)

    def record_skip(self, path: str, reason: str) -> None:
        self.record_skips([(path, reason)])

    def record_skips(self, skips: list[tuple[str, str]]) -> None:
        """Remember why files were not indexed (shown in the sources table). A skipped new
        version of an indexed file removes the old chunks: the notes changed, the index must
        not answer from the stale version. One manifest save for all of them."""
        if not skips:
            return
        with self._write("skip"):
            old = [self.manifest["sources"].get(path) for path, _ in skips]
            for path, reason in skips:
                self.manifest["sources"][path] = SourceRecord(path=path, status="skipped",
                                                              reason=reason)
            self._save()
            self._delete_ids([i for rec in old for i in _ids_of(rec)])
            self._drop_unused_texts([r.hash for r in old if r is not None])

    def delete_source(self, path: str) -> SourceRecord:
        rec = self.manifest["sources"].get(path)
        if rec is None:
            raise ValueError(f"no source {path!r} in knowledge base {self.name!r}")
        return self.delete_sources([path])[0]

    def delete_sources(self, paths: list[str]) -> list[SourceRecord]:
        """Remove sources (unknown paths are ignored): manifest first, then their chunks."""
        with self._write("delete"):
            gone = [r for p in paths if (r := self.manifest["sources"].pop(p, None)) is not None]
            if not gone:
                return []
            self._save()
            self._crash_point("rag.after_manifest")
            self._delete_ids([i for rec in gone for i in _ids_of(rec)])
            self._drop_unused_texts([r.hash for r in gone])
            return gone

    def check(self, repair: bool = True) -> CheckReport:
        """Compare the vector store with the manifest: chunks no indexed source vouches for
        are orphans; a source with fewer chunks than it recorded is damaged. With `repair`,
        orphans and unused texts are removed and damaged sources are marked skipped (so the
        next ingest indexes them again). Reads every chunk's metadata: seconds at 100k
        chunks, so it runs at open only after an interrupted write, and when asked."""
        t0 = time.perf_counter()
        with self._lock:
            rep = CheckReport(repaired=repair)
            sources = self.manifest["sources"]
            wanted: dict[str, tuple[str, set[str], set[str]]] = {}
            for p, r in sources.items():
                if r.status == "indexed":
                    wanted[p] = (r.hash, {chunk_id(p, n, r.hash) for n in range(r.chunks)},
                                 {chunk_id(p, n) for n in range(r.chunks)})
            found: dict[str, set[str]] = {}
            legacy: dict[str, set[str]] = {}
            orphans: list[str] = []
            page, offset = 5000, 0
            while True:
                got = self.collection.get(include=["metadatas"], limit=page, offset=offset)
                if not got["ids"]:
                    break
                offset += len(got["ids"])
                for cid, meta in zip(got["ids"], got["metadatas"], strict=True):
                    p = (meta or {}).get("path")
                    w = wanted.get(p)
                    if w is not None and meta.get("hash") == w[0] and cid in w[1]:
                        found.setdefault(p, set()).add(cid)
                    elif w is not None and meta.get("hash") == w[0] and cid in w[2]:
                        legacy.setdefault(p, set()).add(cid)
                    else:
                        orphans.append(cid)
            rep.chunks = offset
            of_damaged: list[str] = []
            for p, (h, new_ids, _) in wanted.items():
                have, old = found.get(p, set()), legacy.get(p, set())
                if have and old:  # both id schemes for one version: the current one wins
                    orphans += sorted(old)
                    old = set()
                if len(have) + len(old) < len(new_ids) or \
                        not (self.dir / "texts" / f"{h}.txt").exists():
                    rep.damaged.append(p)
                    of_damaged += sorted(have | old)
            rep.orphans = len(orphans)
            orphans += of_damaged
            used = {r.hash for p, r in sources.items() if r.hash and p not in rep.damaged}
            unused = [f for f in (self.dir / "texts").glob("*.txt") if f.stem not in used]
            rep.texts_removed = len(unused)
            if repair:
                with self._write("repair"):
                    if rep.damaged:
                        for p in rep.damaged:
                            sources[p] = SourceRecord(path=p, status="skipped", reason=DAMAGED,
                                                      kind=sources[p].kind)
                        self._save()
                    self._delete_ids(orphans)
                    for f in unused:
                        f.unlink(missing_ok=True)
                    self._bm25 = None
                    shutil.rmtree(self.dir / "bm25", ignore_errors=True)
            rep.seconds = time.perf_counter() - t0
            return rep

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
        order = [k for k in order if self._vouched(got["metadatas"][k])]
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
        fewer (no ``count()`` first: at 100k chunks that was 5-10 ms, more than the search).
        Chunks the manifest does not vouch for (left by a crash, not yet repaired) are left
        out."""
        res = self.collection.query(query_embeddings=vector.reshape(1, -1), n_results=n,
                                    include=["documents", "metadatas", "distances"])
        return [(self._record(cid, doc, meta), 1.0 - float(dist)) for cid, doc, meta, dist in
                zip(res["ids"][0], res["documents"][0], res["metadatas"][0],
                    res["distances"][0], strict=True) if self._vouched(meta)]

    def bm25(self) -> Bm25Index:
        """The lexical index for what the manifest lists now (loaded from disk or rebuilt)."""
        key = self.state_key
        cached = self._bm25
        if cached is not None and cached.version == key:
            return cached
        with self._bm25_lock:  # not the write lock: a long write must not hold up a search
            key = self.state_key
            if self._bm25 is not None and self._bm25.version == key:
                return self._bm25
            idx = Bm25Index.load(self.dir / "bm25")
            if idx is None or idx.version != key:
                idx = self._build_bm25(key)
                idx.save(self.dir / "bm25")
            self._bm25 = idx
            return idx

    def _build_bm25(self, key: str) -> Bm25Index:
        ids, texts = [], []
        page = 5000
        total = self.chunk_count()
        for offset in range(0, total, page):
            got = self.collection.get(include=["documents", "metadatas"], limit=page,
                                      offset=offset)
            for cid, doc, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True):
                if not self._vouched(meta):
                    continue
                ids.append(cid)
                texts.append(embed_text(meta["path"], meta.get("heading", ""), doc or ""))
        return Bm25Index.build(ids, texts, version=key)

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


def _write_durably(path: Path, text: str, fsync: bool = True) -> None:
    """Write a file whole or not at all (temp file, fsync, rename): a reader or a restart after
    a crash sees the old version or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def collection_name(name: str, owner: str | None) -> str:
    """The Chroma collection of a knowledge base. Two owners may each have one called "notes",
    and Chroma names are at most 63 characters: an owner's collection is named by a digest of
    (owner, name); a shared one keeps the name it always had."""
    if not owner:
        return f"rag-{name}-v1"
    return f"rag-o{hashlib.sha256(f'{owner}/{name}'.encode()).hexdigest()[:32]}-v1"


def list_kbs(root: Path) -> list[str]:
    root = Path(root)
    if not root.exists():
        return []
    return sorted(d.name for d in root.iterdir() if (d / "manifest.json").exists())
