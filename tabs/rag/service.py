"""RagService: what the RAG tab does, as plain methods on the shared Studio (no Gradio here).

It owns the Chroma client and the knowledge bases, runs small ingests in the request and big
ones as jobs (and applies their results), retrieves, answers through the shared LLM engine, and
evaluates. Models (embedder, reranker, chat) all go through ``studio.models``.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from studio.jobs import ALL, FINAL
from studio.models import BudgetExceeded
from studio.safety import check_model_source, stage_uploads
from tabs.rag import ingest as ingest_mod
from tabs.rag.answer import Answer, AnswerEvent, answer_stream
from tabs.rag.config import KIND, AnswerConfig, IngestLimits, RetrievalConfig, check_kb_name
from tabs.rag.embedders import (
    batch_threads,
    encode,
    query_threads,
    register_embedder,
    register_reranker,
    rerank_scores,
    torch_threads,
)
from tabs.rag.evaluation import (
    EvalRun,
    QAItem,
    evaluate,
    generate_qa,
    load_runs,
    parse_qa,
    qa_jsonl,
    save_run,
)
from tabs.rag.index import CheckReport, KnowledgeBase, SourceRecord, list_kbs, open_client
from tabs.rag.ingest import IngestResult
from tabs.rag.loaders import resolve_folder
from tabs.rag.retrieval import SearchResult, search

SOURCE_HEADERS = ["path", "kind", "status", "chunks", "lines", "size", "reason"]
# An owner's knowledge bases live in <root>/_owners/<owner>/<name>: "_owners" can never be a
# knowledge base's own name (names start with a letter or a digit).
OWNERS_DIR = "_owners"
OWNER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
NO_SESSION = "this page has no session yet; reload it"
READ_ONLY = ("knowledge base {name!r} is shared (made outside the studio's pages): it can be "
             "searched and asked here, not changed; create a knowledge base of your own")
WARM_TEXT = "what did I write about the garden, the server port and the deploy pipeline"


def get_service(studio: Any) -> RagService:
    """The one RagService of a Studio (kept in ``studio.extras``)."""
    return studio.service("rag", RagService)


class RagService:
    def __init__(self, studio: Any, limits: IngestLimits | None = None):
        self.studio = studio
        self.settings = studio.settings
        self.root = Path(self.settings.indexes_dir) / "rag"
        self.root.mkdir(parents=True, exist_ok=True)
        self.limits = limits or IngestLimits()
        self._client: Any = None
        self._kbs: dict[str, KnowledgeBase] = {}
        self._lock = threading.RLock()  # the dict of knowledge bases only; each has its own
        self._applying: set[str] = set()  # runs whose result a thread is storing now
        self._wake = threading.Event()
        rr = studio.choices.get("reranker")
        self.reranker_source: str | None = rr.source if rr else None
        self.reranker_note = (rr.note if rr and rr.note else
                              "no reranker is configured; point at a local cross-encoder folder")
        self._reranker_error: str | None = None  # why the set reranker failed to load
        self.engine: Any = None  # the chat engine, built on first use (tests may set one)
        # CPU threads for a query and for batch embedding (see embedders.query_threads)
        self.query_threads = query_threads()
        self.batch_threads = batch_threads()
        # Finished ingest jobs are stored by this thread, woken by the job manager, never inside
        # a request (a 20k-file result took minutes and held up every knowledge base).
        jobs = getattr(studio, "jobs", None)
        if jobs is not None and hasattr(jobs, "add_listener"):
            jobs.add_listener(lambda run_id, status: self._wake.set()
                              if f"-{KIND}-" in run_id else None)
            self._applier = threading.Thread(target=self._apply_loop, name="rag-apply",
                                             daemon=True)
            self._applier.start()
            self._wake.set()  # results that finished while the studio was down

    # ----- knowledge bases ----------------------------------------------------------------------
    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = open_client(self.settings)
            return self._client

    def embedder_choice(self) -> tuple[str, str]:
        """(source, title) of the profile's embedder, or a clear error when there is none."""
        choice = self.studio.choices.get("embedder")
        if choice is None or choice.source is None:
            note = choice.note if choice is not None else ""
            raise ValueError(f"no embedding model is available: {note or 'set one up first'}")
        return choice.source, choice.title

    # Ownership: every method takes `owner`, the page's owner id (studio.sessions.owner_of).
    # An owner sees and changes its own knowledge bases and reads the shared ones (made at the
    # service level by a script or a bench, or before owners existed), which no page changes.
    # Another owner's knowledge base is "No knowledge base 'x'.", as a missing one is. None is a
    # page without a session: the shared ones, read-only. ALL (the default) is the studio itself
    # (service-level scripts, benches, tests): the shared knowledge bases, every right.
    def _folder(self, owner: str | None) -> Path:
        """Where `owner`'s knowledge bases live (None: the shared ones)."""
        if owner is None:
            return self.root
        if not OWNER_ID.match(str(owner)):
            raise ValueError(NO_SESSION)
        return self.root / OWNERS_DIR / owner

    def list_kbs(self, owner: Any = ALL) -> list[str]:
        """The knowledge bases `owner` may pick: its own, then the shared ones."""
        shared = list_kbs(self.root)
        if owner is ALL or owner is None:
            return shared
        own = list_kbs(self._folder(owner))
        return own + [n for n in shared if n not in own]

    def _open(self, owner: str | None, name: str) -> KnowledgeBase:
        with self._lock:
            kb = self._kbs.get((owner, name))
            if kb is None:
                kb = self._kbs[(owner, name)] = KnowledgeBase(
                    name, self._folder(owner), self.client, embedder="", owner=owner)
        return kb

    def create_kb(self, name: str, *, owner: Any = ALL) -> KnowledgeBase:
        name = check_kb_name(name)
        if owner is None:
            raise ValueError(NO_SESSION)
        key = None if owner is ALL else owner
        with self._lock:
            if name in list_kbs(self._folder(key)):
                return self._open(key, name)
            if key is not None and name in list_kbs(self.root):
                raise ValueError(f"{name!r} is the name of a shared knowledge base; pick "
                                 "another name for yours")
            source, title = self.embedder_choice()
            kb = KnowledgeBase(name, self._folder(key), self.client, embedder=title, owner=key)
            kb.manifest["embedder_source"] = source
            kb._write_manifest()
            self._kbs[(key, name)] = kb
            return kb

    def kb(self, name: str | None, *, owner: Any = ALL, write: bool = False) -> KnowledgeBase:
        """The knowledge base `owner` means by `name`: its own, else a shared one (refused
        when `write`: a page never changes a shared knowledge base)."""
        if not name:
            raise ValueError("pick or create a knowledge base first")
        name = check_kb_name(name)
        if owner is not ALL and owner is not None and name in list_kbs(self._folder(owner)):
            return self._open(owner, name)
        if name not in list_kbs(self.root):
            raise ValueError(f"No knowledge base {name!r}.")
        if write and owner is not ALL:
            raise ValueError(READ_ONLY.format(name=name) if owner else NO_SESSION)
        return self._open(None, name)

    def check(self, kb_name: str, repair: bool = True, *, owner: Any = ALL) -> CheckReport:
        """"Check and repair": make the vector store and the lexical index agree with the
        sources table (orphan chunks removed, sources with missing chunks marked to ingest
        again)."""
        return self.kb(kb_name, owner=owner, write=repair).check(repair=repair)

    def delete_kb(self, name: str, *, owner: Any = ALL) -> None:
        kb = self.kb(name, owner=owner, write=True)
        with self._lock:
            kb.drop()
            self._kbs.pop((kb.owner, kb.name), None)

    # ----- models ---------------------------------------------------------------------------------
    def _on_disk(self, source: str, what: str) -> str:
        """The folder to load for `source`: a local folder as it is, a hub id from the cache;
        a hub id that is not on disk raises `NotOnDisk` (go to the Models tab). Nothing here
        touches the network: a request never starts a silent download."""
        from studio.hub import require_local

        return require_local(self.studio, source, what)

    def _embedder_key(self, kb: KnowledgeBase) -> str:
        source = kb.manifest.get("embedder_source")
        if not source:
            source, _ = self.embedder_choice()
        if not (Path(source).exists() or "/" in source and not source.startswith(("/", "."))):
            raise ValueError(f"knowledge base {kb.name!r} was built with the embedder {source}, "
                             "which is not on this machine; create a new knowledge base")
        path = self._on_disk(source, f"The embedder of knowledge base {kb.name!r}")
        return register_embedder(self.studio, path, f"embedder {kb.embedder}", named=source)

    def encode(self, kb: KnowledgeBase, texts: list[str]) -> np.ndarray:
        with self.studio.models.use(self._embedder_key(kb)) as model:
            return encode(model, texts)

    def reranker_status(self) -> tuple[bool, str]:
        """(available, note) for the reranker switch: set, on disk and not failed to load.
        Only the file system is looked at (this runs on every page build and warm-up)."""
        if self.reranker_source:
            if self._reranker_error:
                return False, f"Reranker unavailable: {self._reranker_error}"
            try:
                self._on_disk(self.reranker_source, "The reranker")
            except ValueError as e:
                return False, f"Reranker unavailable: {e}"
            return True, f"reranker: {Path(self.reranker_source).name}"
        return False, f"Reranker unavailable: {self.reranker_note}"

    def set_reranker(self, source: str | None) -> None:
        """Use a cross-encoder from a local folder (or a hub id already on disk); None or ''
        turns it off. It is loaded and tried on one pair now, so one that cannot be used is
        refused here, with the reason, and the previous choice stays."""
        source = (source or "").strip() or None
        if source is None:
            self.reranker_source, self._reranker_error = None, None
            return
        if source.startswith(("/", ".", "~")) and not Path(source).expanduser().is_dir():
            raise ValueError(f"no such reranker folder: {source}")
        # a model folder (no pickle that runs code), or a hub id; not /etc
        check_model_source(source, label="Reranker", folders=True, need=("config.json",))
        if source.startswith(("/", ".", "~")):
            source = str(Path(source).expanduser())
        path = self._on_disk(source, "The reranker")
        key = register_reranker(self.studio, path, named=source)
        try:
            with self.studio.models.use(key) as model:
                rerank_scores(model, WARM_TEXT, [WARM_TEXT])
        except BudgetExceeded as e:
            raise ValueError(f"The reranker {source} does not fit now: {e}") from None
        except Exception as e:  # noqa: BLE001 - any loader failure is the user's message
            raise ValueError(self._load_failure(source, e)) from None
        self.reranker_source, self._reranker_error = source, None

    @staticmethod
    def _load_failure(source: str, exc: BaseException) -> str:
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        return (f"the reranker {source} cannot be loaded ({type(exc).__name__}"
                f"{': ' + detail if detail else ''}). Point at a cross-encoder model folder "
                "(config.json, weights and tokenizer), or download one on the Models tab.")

    def _rerank_fn(self) -> Callable[[str, list[str]], np.ndarray] | None:
        """The reranker as a function, or None when none is set or it is unavailable (not on
        disk, or it failed to load once: that is remembered, not retried on every warm-up)."""
        if not self.reranker_source or not self.reranker_status()[0]:
            return None
        source = self.reranker_source
        key = register_reranker(self.studio, self._on_disk(source, "The reranker"),
                                named=source)

        def rerank(query: str, texts: list[str]) -> np.ndarray:
            try:
                with self.studio.models.use(key) as model:
                    return rerank_scores(model, query, texts)
            except BudgetExceeded:
                raise
            except Exception as e:  # noqa: BLE001
                if self.studio.models.get_loaded(key) is not None:
                    raise  # it loaded: this is not a loading problem
                self._reranker_error = self._load_failure(source, e)
                raise ValueError(f"Reranker unavailable: {self._reranker_error}") from None
        return rerank

    def chat_engine(self) -> Any:
        if self.engine is None:
            from studio.llm import LLMEngine

            choice = self.studio.choices.get("chat")
            if choice is None:
                raise ValueError("no chat model is configured")
            self.engine = LLMEngine.from_choice(self.studio, choice)
        return self.engine

    # ----- ingest ---------------------------------------------------------------------------------
    def ingest(self, kb_name: str, paths: list[str] | None = None, folder: str | None = None,
               background: bool | None = None,
               progress: Callable[[int, int, str], None] | None = None, *,
               owner: Any = ALL) -> IngestResult:
        """Index uploaded files/zips and/or a folder under the studio home. Big inputs (or
        background=True) go to a job; the result then says which run to watch. A name that
        is not one of `owner`'s knowledge bases makes one."""
        kb = self.kb(kb_name, owner=owner, write=True) if kb_name in self.list_kbs(owner) \
            else self.create_kb(kb_name, owner=owner)
        # Staged by content with distinct names: two notes.md from different folders are both
        # indexed (notes.md and notes-<hash>.md), the same file twice once.
        paths = [str(p) for p in stage_uploads([p for p in (paths or []) if p],
                                               Path(self.settings.uploads_dir) / "rag" / "staged",
                                               label="Upload")]
        root = resolve_folder(folder, self.settings.home) if folder and folder.strip() else None
        if not paths and root is None:
            raise ValueError("add files, a zip, or a folder to ingest")
        if background is None:
            background = self._is_big(paths, root)
        if background:
            return IngestResult(run_id=self._submit(kb, paths, root))
        t0 = time.perf_counter()
        items = ingest_mod.gather(paths, root, self.limits)
        prep = ingest_mod.prepare(items, kb.known_hashes(), self.limits,
                                  f"{root.name}/" if root else None)
        t_read = time.perf_counter()
        if progress:
            progress(0, max(prep.chunk_total, 1), "embedding")
        key = self._embedder_key(kb)
        with self.studio.models.use(key) as model, torch_threads(self.batch_threads):
            t_embed = time.perf_counter()  # after a model load, which is not embedding
            vectors = ingest_mod.embed_prepared(prep, lambda t: encode(model, t),
                                                progress=progress)
        t_store = time.perf_counter()
        res = ingest_mod.apply(kb, prep, vectors)
        end = time.perf_counter()
        res.seconds = end - t0
        res.stage_seconds = {"read": t_read - t0, "model": t_embed - t_read,
                             "embed": t_store - t_embed, "store": end - t_store}
        return res

    def _is_big(self, paths: list[str], root: Path | None) -> bool:
        size, count = 0, 0
        for p in paths:
            p = Path(p)
            if p.suffix.lower() == ".zip" and zipfile.is_zipfile(p):
                with zipfile.ZipFile(p) as zf:
                    infos = [i for i in zf.infolist() if not i.is_dir()]
                size += sum(i.file_size for i in infos)
                count += len(infos)
            elif p.exists():
                size, count = size + p.stat().st_size, count + 1
        if root is not None:
            for f in root.rglob("*"):
                if f.is_file():
                    size, count = size + f.stat().st_size, count + 1
                if count > self.limits.background_files:
                    break
        return size > self.limits.background_bytes or count > self.limits.background_files

    def _submit(self, kb: KnowledgeBase, paths: list[str], root: Path | None) -> str:
        source = kb.manifest.get("embedder_source") or self.embedder_choice()[0]
        # the job loads the folder on disk: a hub id not downloaded yet is refused here
        source = self._on_disk(source, f"The embedder of knowledge base {kb.name!r}")
        # Uploads are temp files: keep copies the job (and a resume) can read later.
        staged = []
        if paths:
            dest = Path(self.settings.uploads_dir) / "rag" / time.strftime("%Y%m%d-%H%M%S-") \
                / kb.name
            dest.mkdir(parents=True, exist_ok=True)
            for p in paths:
                target = dest / Path(p).name
                shutil.copyfile(p, target)
                staged.append(str(target))
        config = {"kb": kb.name, "kb_owner": kb.owner, "kb_dir": str(kb.dir), "paths": staged,
                  "folder": str(root) if root else None,
                  "folder_prefix": f"{root.name}/" if root else None,
                  "embedder": source, "limits": asdict(self.limits)}
        cuda = self.studio.probe.device == "cuda"
        what = root.name if root else f"{len(staged)} file(s)"
        return self.studio.jobs.submit(kind=KIND, entry="tabs.rag.ingest:run", config=config,
                                       title=f"RAG ingest {what} → {kb.name}",
                                       vram_bytes=512 * 1024**2 if cuda else 0,
                                       owner=kb.owner or ALL)  # the KB owner's run

    def _apply_loop(self) -> None:
        while not self.studio.jobs.stopped:
            self._wake.wait(timeout=5.0)
            self._wake.clear()
            try:
                self.sync_jobs()
            except Exception:  # the loop must outlive one bad run folder
                import logging

                logging.getLogger("studio.rag").exception("storing an ingest result failed")

    def pending_jobs(self, kb_name: str | None = None, *, owner: Any = ALL) -> list[str]:
        """Finished ingest runs whose result is not stored yet (of one knowledge base: `kb_name`
        of `owner`, None for a shared one)."""
        out = []
        for d in sorted(Path(self.settings.runs_dir).glob(f"*-{KIND}-*")):
            out_dir = d / "ingest"
            if not (out_dir / "done.json").exists() or (out_dir / "applied.json").exists():
                continue
            try:
                meta = json.loads((d / "run.json").read_text())
                config = json.loads((d / "config.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue
            mine = not kb_name or (config.get("kb") == kb_name and
                                   config.get("kb_owner") == (None if owner is ALL else owner))
            if meta.get("status") in FINAL and mine:
                out.append(d.name)
        return out

    def sync_jobs(self, kb_name: str | None = None, *, owner: Any = ALL
                  ) -> list[IngestResult]:
        """Store the results of finished ingest jobs (once each). Runs in the service's
        background thread; a script or test may call it to store them now. Only the knowledge
        base being written waits (its own lock)."""
        applied = []
        for run_id in self.pending_jobs(kb_name, owner=owner):
            d = Path(self.settings.runs_dir) / run_id
            out = d / "ingest"
            with self._lock:
                if run_id in self._applying:
                    continue
                self._applying.add(run_id)
            try:
                config = json.loads((d / "config.json").read_text())
                kb_owner = config.get("kb_owner")  # the knowledge base the job was for
                if config["kb"] not in list_kbs(self._folder(kb_owner)):
                    continue
                kb = self._open(kb_owner, config["kb"])
                with kb.batch():
                    if (out / "applied.json").exists():
                        continue
                    saved = ingest_mod.load_saved(out)
                    if saved is None:
                        continue
                    res = ingest_mod.apply(kb, *saved)
                    res.run_id = run_id
                    (out / "applied.json").write_text(json.dumps(res.as_dict()))
                applied.append(res)
            finally:
                with self._lock:
                    self._applying.discard(run_id)
        return applied

    # ----- sources --------------------------------------------------------------------------------
    def sources(self, kb_name: str, *, owner: Any = ALL) -> list[SourceRecord]:
        return self.kb(kb_name, owner=owner).sources()

    def source_rows(self, kb_name: str, *, owner: Any = ALL) -> list[list[Any]]:
        from studio.config import format_bytes

        return [[r.path, r.kind, r.status, r.chunks, r.lines, format_bytes(r.size) if r.size
                 else "", r.reason] for r in self.sources(kb_name, owner=owner)]

    def delete_source(self, kb_name: str, path: str, *, owner: Any = ALL) -> SourceRecord:
        kb = self.kb(kb_name, owner=owner, write=True)
        if not path:
            raise ValueError("pick a source to delete")
        return kb.delete_source(path)

    def read_source(self, kb_name: str, path: str, start: int, end: int, *,
                    owner: Any = ALL) -> str:
        return self.kb(kb_name, owner=owner).read_lines(path, start, end)

    # ----- retrieve and answer -------------------------------------------------------------------
    def search(self, kb_name: str, query: str, cfg: RetrievalConfig | None = None, *,
               owner: Any = ALL) -> SearchResult:
        kb = self.kb(kb_name, owner=owner)
        cfg = cfg or RetrievalConfig()
        rerank = self._rerank_fn() if cfg.rerank else None
        if cfg.rerank and rerank is None:
            raise ValueError(self.reranker_status()[1])
        with torch_threads(self.query_threads):
            return search(kb, query, cfg, lambda q: self.encode(kb, [q])[0], rerank)

    def warm(self, kb_name: str, *, owner: Any = ALL) -> dict[str, float]:
        """Make the first question on a knowledge base as fast as the next ones: load its BM25
        index, touch Chroma's vector index, and load and run the embedder (and the reranker,
        when one is set) once. The first question on a 100k-chunk knowledge base from a fresh
        app took 7 s cold and under 0.1 s after this. Cheap when already warm (one small
        query). Returns each step's milliseconds."""
        kb = self.kb(kb_name, owner=owner)
        took: dict[str, float] = {}
        t0 = time.perf_counter()
        kb.bm25()
        took["bm25"] = (time.perf_counter() - t0) * 1000.0
        with torch_threads(self.query_threads):
            t0 = time.perf_counter()
            qv = self.encode(kb, [WARM_TEXT])[0]
            took["embedder"] = (time.perf_counter() - t0) * 1000.0
            t0 = time.perf_counter()
            kb.vector_search(qv, 1)
            took["vector"] = (time.perf_counter() - t0) * 1000.0
            rerank = self._rerank_fn()
            if rerank is not None:
                t0 = time.perf_counter()
                rerank(WARM_TEXT, [WARM_TEXT] * 4)
                took["reranker"] = (time.perf_counter() - t0) * 1000.0
        return took

    def answer_stream(self, kb_name: str, question: str, history: list[dict[str, Any]] | None,
                      rcfg: RetrievalConfig | None = None, acfg: AnswerConfig | None = None,
                      stop_event: threading.Event | None = None, *,
                      owner: Any = ALL) -> Iterator[AnswerEvent]:
        if not (question or "").strip():
            raise ValueError("ask a question first")
        self.kb(kb_name, owner=owner)
        rcfg = rcfg or RetrievalConfig()
        return answer_stream(self.chat_engine(), question, history or [],
                             lambda q: self.search(kb_name, q, rcfg, owner=owner),
                             lambda p, s, e: self.read_source(kb_name, p, s, e, owner=owner),
                             acfg or AnswerConfig(), stop_event)

    def answer(self, kb_name: str, question: str, history: list[dict[str, Any]] | None = None,
               rcfg: RetrievalConfig | None = None, acfg: AnswerConfig | None = None, *,
               owner: Any = ALL) -> Answer:
        final = None
        for ev in self.answer_stream(kb_name, question, history, rcfg, acfg, owner=owner):
            if ev.kind == "done":
                final = ev.answer
        assert final is not None
        return final

    # ----- evaluation -----------------------------------------------------------------------------
    # Evaluation runs live in the knowledge base's folder: they are its owner's (a shared
    # knowledge base is evaluated at the service level only, as it is changed only there).
    def eval_dir(self, kb_name: str, *, owner: Any = ALL, write: bool = False) -> Path:
        return self.kb(kb_name, owner=owner, write=write).dir / "evals"

    def generate_qa(self, kb_name: str, n: int = 10, seed: int = 0, *,
                    owner: Any = ALL) -> tuple[list[QAItem], Path]:
        """Questions written by the LLM from sampled chunks; saved as JSONL to review."""
        from studio.llm import GenerationSettings

        kb = self.kb(kb_name, owner=owner, write=True)
        got = kb.collection.get(include=["documents", "metadatas"], limit=500)
        chunks = [(m["path"], d) for d, m in zip(got["documents"], got["metadatas"], strict=True)]
        if not chunks:
            raise ValueError("the knowledge base is empty; ingest some notes first")
        engine = self.chat_engine()
        gen = GenerationSettings(max_new_tokens=96, temperature=0.0, seed=seed)
        items = generate_qa(lambda p: engine.chat([{"role": "user", "content": p}], gen).text,
                            chunks, n, seed)
        path = kb.dir / "evals" / f"qa-generated-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(qa_jsonl(items))
        return items, path

    def evaluate(self, kb_name: str, qa_path: str | None = None, generate_n: int = 0,
                 k: int = 3, answers: bool = False,
                 progress: Callable[[int, int, str], None] | None = None, *,
                 owner: Any = ALL) -> EvalRun:
        """Run an evaluation from an uploaded JSONL QA set, or `generate_n` generated questions,
        and save it."""
        evals = self.eval_dir(kb_name, owner=owner, write=True)
        read_notes: list[str] = []
        if qa_path:
            text = Path(qa_path).read_text(encoding="utf-8")
            items, read_notes = parse_qa(text)
            origin = Path(qa_path).name
            # the set as used, next to the run (a re-upload of a fixed file is a new run)
            saved = evals / f"qa-uploaded-{time.strftime('%Y%m%d-%H%M%S')}-" \
                f"{Path(qa_path).stem[:40]}.jsonl"
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(qa_jsonl(items))
        elif generate_n > 0:
            items, saved = self.generate_qa(kb_name, generate_n, owner=owner)
            origin = f"generated by the LLM ({saved.name})"
        else:
            raise ValueError("upload a QA set (JSONL) or ask for generated questions")
        rerank_ok = self.reranker_status()[0]
        best = "hybrid + rerank" if rerank_ok else "hybrid"
        answer_fn = None
        if answers:
            rcfg = RetrievalConfig(top_k=k, hybrid=True, rerank=rerank_ok)
            answer_fn = lambda q: self.answer(kb_name, q, None, rcfg, owner=owner)  # noqa: E731
        run = evaluate(items, lambda cfg: (lambda q: self.search(kb_name, q, cfg, owner=owner)),
                       k, rerank_ok, answer_fn, best, progress, origin)
        run.notes = read_notes + run.notes
        run.qa_file = str(saved)
        save_run(evals, run)
        return run

    def eval_runs(self, kb_name: str, *, owner: Any = ALL) -> list[EvalRun]:
        return load_runs(self.eval_dir(kb_name, owner=owner))
