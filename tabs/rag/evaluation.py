"""Evaluation: does a change (hybrid, reranker, chunking, a new embedder) help on *your* notes?

A QA set is JSONL, one object per line: ``question`` (required), ``expected_answer`` and
``expected_source`` (a path, or the end of one like ``setup.md``, optionally ``:start-end``).
It can also be generated from the corpus by the LLM (saved as JSONL to fix up and re-upload).

Metrics, per retrieval configuration (vector, hybrid, each with and without the reranker):
hit@k (the expected source is in the top k) and MRR (1/rank of its first passage). With
answers on: ROUGE-L F1 against the expected answer and a rubric score in 0..1, the mean of
(a) the answer cites a passage, (b) it cites the expected source, (c) it contains at least half
of the expected answer's content words (left out when no expected answer is given); a question
with no expected source is expected to get "I don't know from your notes".
Every run is saved in the knowledge base's ``evals/`` folder, so runs can be compared.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tabs.rag.answer import Answer, content_words
from tabs.rag.config import RetrievalConfig
from tabs.rag.retrieval import SearchResult

CONFIGS: list[tuple[str, bool, bool]] = [  # name, hybrid, rerank
    ("vector", False, False),
    ("hybrid", True, False),
    ("vector + rerank", False, True),
    ("hybrid + rerank", True, True),
]


@dataclass
class QAItem:
    question: str
    expected_answer: str = ""
    expected_source: str = ""


@dataclass
class EvalRow:
    config: str
    hit_at_k: float
    mrr: float
    n: int
    rouge_l: float | None = None
    rubric: float | None = None


@dataclass
class EvalRun:
    id: str
    created: float
    k: int
    qa_source: str
    rows: list[EvalRow]
    items: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----- QA sets ---------------------------------------------------------------------------------
def parse_qa_jsonl(text: str) -> list[QAItem]:
    """QA items from JSONL text; a bad line is reported with its number."""
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"QA set line {n} is not JSON: {exc.msg}") from None
        if not isinstance(obj, dict) or not str(obj.get("question", "")).strip():
            raise ValueError(f"QA set line {n} needs a \"question\" field")
        items.append(QAItem(question=str(obj["question"]).strip(),
                            expected_answer=str(obj.get("expected_answer", "") or ""),
                            expected_source=str(obj.get("expected_source", "") or "")))
    if not items:
        raise ValueError("the QA set is empty")
    return items


def qa_jsonl(items: list[QAItem]) -> str:
    return "".join(json.dumps(asdict(i)) + "\n" for i in items)


_Q = re.compile(r"question\s*:\s*(.+?)(?:\n|$)", re.I)
_A = re.compile(r"answer\s*:\s*(.+)", re.I | re.S)


def parse_generated(text: str) -> tuple[str, str] | None:
    """(question, answer) from an LLM reply in the asked-for format, or a bare question."""
    q = _Q.search(text)
    a = _A.search(text)
    if q:
        return q.group(1).strip(), (a.group(1).strip().split("\n")[0] if a else "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().endswith("?")]
    return (lines[0], "") if lines else None


def generate_qa(chat: Callable[[str], str], chunks: list[tuple[str, str]], n: int,
                seed: int = 0) -> list[QAItem]:
    """Ask the LLM for one question (and answer) per sampled chunk. `chunks` are (path, text);
    `chat` sends one user message and returns the reply."""
    rng = random.Random(seed)
    pool = [c for c in chunks if len(c[1].split()) >= 8]
    rng.shuffle(pool)
    items = []
    for path, text in pool:
        if len(items) >= n:
            break
        prompt = (f"Here is a passage from my notes:\n\n{text.strip()[:1500]}\n\nWrite one "
                  "question that this passage answers, then its short answer, exactly in this "
                  "format:\nQuestion: ...\nAnswer: ...")
        got = parse_generated(chat(prompt))
        if got and len(got[0]) > 8:
            items.append(QAItem(question=got[0], expected_answer=got[1], expected_source=path))
    if not items:
        raise ValueError("the model wrote no usable questions; upload a QA set instead")
    return items


# ----- metrics ---------------------------------------------------------------------------------
def source_matches(path: str, start: int, end: int, expected: str) -> bool:
    """`expected` is a path or path suffix, optionally with ``:start-end`` lines to overlap."""
    expected = expected.strip()
    m = re.match(r"^(.*?):(\d+)-(\d+)$", expected)
    lines = None
    if m:
        expected, lines = m.group(1), (int(m.group(2)), int(m.group(3)))
    if not (path == expected or path.endswith("/" + expected.lstrip("/"))):
        return False
    return lines is None or (start <= lines[1] and end >= lines[0])


def first_rank(result: SearchResult, expected: str) -> int | None:
    for rank, h in enumerate(result.hits, 1):
        if source_matches(h.chunk.path, h.chunk.start_line, h.chunk.end_line, expected):
            return rank
    return None


def rouge_l(prediction: str, reference: str) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(scorer.score(reference, prediction)["rougeL"].fmeasure)


def rubric(ans: Answer, item: QAItem) -> float:
    """The mean of the checks described in the module docstring, in 0..1."""
    if not item.expected_source:
        return 1.0 if ans.idk else 0.0
    checks = [bool(ans.citations),
              any(source_matches(h.chunk.path, h.chunk.start_line, h.chunk.end_line,
                                 item.expected_source) for h in ans.cited_hits())]
    want = content_words(item.expected_answer)
    if want:
        checks.append(len(want & content_words(ans.text)) >= len(want) / 2)
    return sum(checks) / len(checks)


def evaluate(items: list[QAItem], search_with: Callable[[RetrievalConfig], Callable[[str],
             SearchResult]], k: int, rerank_available: bool,
             answer_fn: Callable[[str], Answer] | None = None, answer_config: str = "",
             progress: Callable[[int, int, str], None] | None = None,
             qa_source: str = "") -> EvalRun:
    """Retrieval metrics for each configuration, and answer metrics for one (if `answer_fn`)."""
    configs = [c for c in CONFIGS if rerank_available or not c[2]]
    notes = [] if rerank_available else ["No reranker is set up, so the rerank rows are left "
                                         "out."]
    scored = [i for i in items if i.expected_source]
    total = len(configs) * len(scored) + (len(items) if answer_fn else 0)
    done = 0
    rows = []
    details = [{"question": i.question, "expected_source": i.expected_source} for i in items]
    index = {id(i): n for n, i in enumerate(items)}  # questions may repeat
    for name, hybrid, rerank in configs:
        search = search_with(RetrievalConfig(top_k=k, hybrid=hybrid, rerank=rerank))
        hits, rr = 0, 0.0
        for item in scored:
            rank = first_rank(search(item.question), item.expected_source)
            hits += rank is not None
            rr += 1.0 / rank if rank else 0.0
            details[index[id(item)]][f"rank[{name}]"] = rank
            done += 1
            if progress:
                progress(done, total, f"retrieval: {name}")
        n = max(len(scored), 1)
        rows.append(EvalRow(config=name, hit_at_k=hits / n, mrr=rr / n, n=len(scored)))
    if answer_fn is not None:
        rouges, rubrics = [], []
        for item in items:
            ans = answer_fn(item.question)
            if item.expected_answer:
                rouges.append(rouge_l(ans.text, item.expected_answer))
            rubrics.append(rubric(ans, item))
            details[index[id(item)]].update(answer=ans.text, citations=ans.citations,
                                          rubric=rubrics[-1])
            done += 1
            if progress:
                progress(done, total, "answers")
        for row in rows:
            if row.config == answer_config:
                row.rouge_l = sum(rouges) / len(rouges) if rouges else None
                row.rubric = sum(rubrics) / len(rubrics)
    return EvalRun(id=time.strftime("%Y%m%d-%H%M%S"), created=time.time(), k=k,
                   qa_source=qa_source, rows=rows, items=details, notes=notes)


# ----- saved runs ------------------------------------------------------------------------------
def save_run(folder: Path, run: EvalRun) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run.id}.json"
    n = 1
    while path.exists():  # two runs in one second
        n += 1
        path = folder / f"{run.id}-{n}.json"
    run.id = path.stem
    path.write_text(json.dumps(run.as_dict(), indent=1))
    return path


def load_runs(folder: Path) -> list[EvalRun]:
    runs = []
    for f in sorted(Path(folder).glob("*.json")):
        try:
            d = json.loads(f.read_text())
            d["rows"] = [EvalRow(**r) for r in d["rows"]]
            runs.append(EvalRun(**d))
        except (json.JSONDecodeError, TypeError, KeyError):
            continue
    return runs


def rows_table(run: EvalRun) -> list[list[Any]]:
    def fmt(v):
        return "–" if v is None else round(v, 3)

    return [[r.config, fmt(r.hit_at_k), fmt(r.mrr), fmt(r.rouge_l), fmt(r.rubric), r.n]
            for r in run.rows]


def chart_rows(runs: list[EvalRun]) -> list[dict[str, Any]]:
    """Long-format rows (run, config, metric, value) for a bar chart across runs."""
    out = []
    for run in runs:
        for r in run.rows:
            for metric in ("hit_at_k", "mrr", "rouge_l", "rubric"):
                v = getattr(r, metric)
                if v is not None:
                    out.append({"run": run.id, "config": r.config,
                                "metric": metric.replace("hit_at_k", f"hit@{run.k}"),
                                "value": round(v, 4)})
    return out
