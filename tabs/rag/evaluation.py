"""Evaluation: does a change (hybrid, reranker, chunking, a new embedder) help on *your* notes?

A QA set is JSONL, one object per line (or one JSON list of objects): ``question``
(required), ``expected_answer`` and ``expected_source`` (a path, or the end of one like
``setup.md``, optionally ``:start-end``). The names other tools use are mapped (``query``,
``answer``/``ground_truth``/``reference``, ``source``/``file``/``path``...; see `ALIASES`); a
set with none of them is refused with the expected schema, never scored on 0 questions. It can
also be generated from the corpus by the LLM (saved as JSONL to download, fix up, re-upload).

Metrics, per retrieval configuration (vector, hybrid, each with and without the reranker):
hit@k (the expected source is in the top k) and MRR (1/rank of its first passage). With
answers on: ROUGE-L F1 against the expected answer and a rubric score in 0..1, the mean of
(a) the answer cites a passage, (b) it cites the expected source (citations the model wrote:
a passage matched afterwards by shared words is no citation), (c) the answer is right: for a
short expected answer (a few words, or one holding a number, version or identifier) an exact
check, each such value must appear as written ("0.22.0" is not "0.26.0"), else at least half of
the expected answer's content words (left out when no expected answer is given); a question
with no expected source is expected to get "I don't know from your notes". Every question's
result is kept in the run (``items``) and shown.
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
    hit_at_k: float | None
    mrr: float | None
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
    qa_file: str = ""  # the QA set used, as saved (generated sets can be downloaded)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----- QA sets ---------------------------------------------------------------------------------
# Field names other evaluation tools and datasets use, mapped to ours (first one present wins).
ALIASES: dict[str, tuple[str, ...]] = {
    "question": ("question", "query", "q", "prompt", "user_input", "input", "instruction"),
    "expected_answer": ("expected_answer", "answer", "answers", "ground_truth",
                        "ground_truths", "reference", "reference_answer", "gold_answer",
                        "gold", "target", "expected", "expected_output", "output", "response",
                        "a"),
    "expected_source": ("expected_source", "source", "sources", "source_file", "file",
                        "filename", "file_name", "path", "doc", "document", "doc_id",
                        "document_id", "expected_file", "expected_path", "reference_source",
                        "expected_doc", "context_source"),
}
_KNOWN = {a for names in ALIASES.values() for a in names}
SCHEMA = ('one JSON object per line: {"question": "...", "expected_answer": "...", '
          '"expected_source": "notes/setup.md"} (expected_source may end in :start-end lines; '
          "also accepted: " + "; ".join(f"{k}: {', '.join(v[1:6])}" for k, v in ALIASES.items())
          + ")")


def _field(obj: dict[str, Any], name: str) -> tuple[str, str | None]:
    """(value, the key it came from) of one of our fields in `obj`; lists give their first
    item (SQuAD's ``answers``, several sources)."""
    lower = {str(k).lower(): k for k in obj}
    for alias in ALIASES[name]:
        key = lower.get(alias)
        if key is None:
            continue
        value = obj[key]
        if isinstance(value, dict):  # SQuAD: {"text": [...], "answer_start": [...]}
            value = value.get("text", "")
        if isinstance(value, list):
            value = value[0] if value else ""
        if isinstance(value, dict):
            value = value.get("text") or value.get("path") or value.get("source") or ""
        text = "" if value is None else str(value).strip()
        if text:
            return text, str(key)
    return "", None


def _objects(text: str) -> list[tuple[int, Any]]:
    stripped = text.lstrip()
    if stripped.startswith("["):  # a .json file holding one list
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the QA set is not valid JSON: {exc.msg} (expected {SCHEMA})") \
                from None
        return list(enumerate(data if isinstance(data, list) else [data], 1))
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ValueError(f"QA set line {n} is not JSON: {exc.msg}. Expected {SCHEMA}") \
                from None
    return out


def parse_qa(text: str) -> tuple[list[QAItem], list[str]]:
    """QA items from JSONL (or a JSON list), with notes on how fields were read. A bad line is
    reported with its number; a set with nothing to score is refused with the schema."""
    items, used, ignored = [], set(), set()
    for n, obj in _objects(text):
        if not isinstance(obj, dict):
            raise ValueError(f"QA set line {n} is not a JSON object. Expected {SCHEMA}")
        q, qk = _field(obj, "question")
        if not q:
            raise ValueError(f"QA set line {n} has no question (fields: "
                             f"{', '.join(map(str, obj)) or 'none'}). Expected {SCHEMA}")
        a, ak = _field(obj, "expected_answer")
        src, sk = _field(obj, "expected_source")
        used.update(k for k in (qk, ak, sk) if k)
        ignored.update(str(k) for k in obj if str(k).lower() not in _KNOWN)
        items.append(QAItem(question=q, expected_answer=a, expected_source=src))
    if not items:
        raise ValueError(f"the QA set is empty. Expected {SCHEMA}")
    if not any(i.expected_source or i.expected_answer for i in items):
        raise ValueError(
            f"the QA set has questions but no expected answers or sources to score them "
            f"against (fields found: {', '.join(sorted(used | ignored))}). Expected {SCHEMA}")
    notes = []
    mapped = sorted(k for k in used if k not in ALIASES)
    if mapped:
        notes.append(f"Read the QA fields {', '.join(mapped)} as question / expected answer / "
                     "expected source.")
    if ignored:
        notes.append(f"Ignored QA fields: {', '.join(sorted(ignored))}.")
    if not any(i.expected_source for i in items):
        notes.append("No question has an expected source, so retrieval (hit@k, MRR) is not "
                     "measured.")
    return items, notes


def parse_qa_jsonl(text: str) -> list[QAItem]:
    """QA items from JSONL text (see `parse_qa`)."""
    return parse_qa(text)[0]


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


# a number, version, code or identifier: "0.26.0", "8080", "tangerine-42", "v2", "10:30"
_VALUE = re.compile(r"\w+(?:[.:/,\-]\w+)*")
SHORT_ANSWER_WORDS = 4


def fact_values(text: str) -> list[str]:
    """The values in `text` that must match exactly: tokens holding a digit, as written."""
    return [v.lower() for v in _VALUE.findall(text or "") if any(c.isdigit() for c in v)]


def is_short(expected: str) -> bool:
    """An expected answer checked exactly: a few words, or one holding a value."""
    return bool(fact_values(expected)) or 0 < len(content_words(expected)) <= SHORT_ANSWER_WORDS


def answer_correct(answer: str, expected: str) -> tuple[bool | None, str]:
    """(correct?, how it was checked) of `answer` against `expected`; (None, "") when there
    is no expected answer. Short answers: exact values ("0.22.0" fails for "0.26.0"), or all
    of its content words; long ones: at least half of the expected content words."""
    want = content_words(expected)
    if not want and not fact_values(expected):
        return None, ""
    if is_short(expected):
        values = fact_values(expected)
        got = set(fact_values(answer))
        words_ok = want <= content_words(answer) if not values else True
        return all(v in got for v in values) and words_ok, "exact"
    return len(want & content_words(answer)) >= len(want) / 2, "words"


def rubric(ans: Answer, item: QAItem) -> float:
    """The mean of the checks described in the module docstring, in 0..1."""
    if not item.expected_source:
        return 1.0 if ans.idk else 0.0
    checks = [bool(ans.citations),
              any(source_matches(h.chunk.path, h.chunk.start_line, h.chunk.end_line,
                                 item.expected_source) for h in ans.cited_hits())]
    correct, _ = answer_correct(ans.text, item.expected_answer)
    if correct is not None:
        checks.append(correct)
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
        n = len(scored)  # no scored question: no number (a 0.0 on 0 questions misleads)
        rows.append(EvalRow(config=name, hit_at_k=hits / n if n else None,
                            mrr=rr / n if n else None, n=n))
    if answer_fn is not None:
        rouges, rubrics = [], []
        for item in items:
            ans = answer_fn(item.question)
            if item.expected_answer:
                rouges.append(rouge_l(ans.text, item.expected_answer))
            rubrics.append(rubric(ans, item))
            correct, how = answer_correct(ans.text, item.expected_answer)
            details[index[id(item)]].update(
                expected_answer=item.expected_answer, answer=ans.text,
                citations=[ans.hits[n - 1].chunk.where for n in ans.citations
                           if 0 < n <= len(ans.hits)],
                related=[ans.hits[n - 1].chunk.where for n in ans.related
                         if 0 < n <= len(ans.hits)],
                correct=correct, check=how, rubric=rubrics[-1])
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
    # oldest first by creation time: names alone put "<second>-2" before "<second>"
    runs.sort(key=lambda r: r.created)
    return runs


def rows_table(run: EvalRun) -> list[list[Any]]:
    def fmt(v):
        return "–" if v is None else round(v, 3)

    return [[r.config, fmt(r.hit_at_k), fmt(r.mrr), fmt(r.rouge_l), fmt(r.rubric), r.n]
            for r in run.rows]


QUESTION_HEADERS = ["question", "expected source", "rank (hybrid)", "expected answer",
                    "answer", "cited", "correct", "rubric"]


def question_rows(run: EvalRun) -> list[list[Any]]:
    """One row per question of `run`: where the expected source ranked (hybrid search, else
    the first configuration), the answer with what it cited, and whether it was right (by the
    exact check for short answers). Related passages are not citations: shown as such."""
    configs = [r.config for r in run.rows]
    pick = "hybrid" if "hybrid" in configs else (configs[0] if configs else "")
    out = []
    for d in run.items:
        rank = d.get(f"rank[{pick}]")
        cited = ", ".join(d.get("citations") or [])
        if not cited and d.get("related"):
            cited = "none (related: " + ", ".join(d["related"]) + ")"
        correct = d.get("correct")
        out.append([d.get("question", ""), d.get("expected_source", "") or "–",
                    "–" if not d.get("expected_source") else (rank if rank else "missed"),
                    d.get("expected_answer", "") or "–",
                    d.get("answer", "–") if "answer" in d else "–",
                    cited if "answer" in d else "–",
                    "–" if correct is None else (f"yes ({d.get('check')})" if correct else
                                                 f"no ({d.get('check')})"),
                    round(d["rubric"], 3) if "rubric" in d else "–"])
    return out


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
