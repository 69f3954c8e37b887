"""Instruction data for QLoRA: read JSONL/JSON/CSV, detect the shape, validate with line numbers,
normalize every record to chat ``messages``, and tokenize through the model's chat template with
the loss on the answer tokens only.

Shapes: alpaca (``instruction``/``input``/``output``), chat (``messages`` with role/content),
ShareGPT (``conversations`` with from/value) and ``prompt``/``completion``. Malformed records are
never dropped silently: `load_records` lists each with its line number, and `prepare` either
raises (fix the file) or skips them and says which (skip).
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.safety import check_lines

SHAPES = ("alpaca", "messages", "sharegpt", "prompt_completion")
SHAPE_TITLES = {"alpaca": "alpaca (instruction / input / output)",
                "messages": "chat messages (role / content)",
                "sharegpt": "ShareGPT conversations (from / value)",
                "prompt_completion": "prompt / completion"}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "model": "assistant", "system": "system", "chatgpt": "assistant"}
_ROLES = ("system", "user", "assistant")
IGNORE = -100  # label value the loss skips
MAX_FILE_BYTES = 1 << 30  # a data file we read whole
MAX_RECORD_BYTES = 4 << 20  # one JSONL/CSV line: far past any max sequence length


class DatasetError(ValueError):
    """The data cannot be used as it is; the message lists the records to fix."""


@dataclass
class Problem:
    """One malformed record: where it is and what is wrong."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class Dataset:
    """Normalized conversations with the line each came from, and the records that failed."""

    path: str
    shape: str
    conversations: list[list[dict[str, str]]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.conversations) + len(self.problems)

    def report(self, limit: int = 20) -> str:
        """A plain summary: shape, usable records and each problem with its line number."""
        head = (f"{Path(self.path).name}: {SHAPE_TITLES.get(self.shape, self.shape)}, "
                f"{len(self.conversations)} usable of {self.total} records")
        if not self.problems:
            return head + "."
        rows = [str(p) for p in self.problems[:limit]]
        if len(self.problems) > limit:
            rows.append(f"... and {len(self.problems) - limit} more")
        return head + f"; {len(self.problems)} malformed:\n" + "\n".join(rows)


# ----- reading ---------------------------------------------------------------------------------
def read_raw(path: Path) -> list[tuple[int, Any, str | None]]:
    """(line, record or None, error or None) for every record of a JSONL, JSON or CSV file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"no such file: {path}")
    suffix = path.suffix.lower()
    # Caps before anything is parsed: a 30 MB single-line file must not take minutes and GBs.
    check_lines(path, label="Training data", max_bytes=MAX_FILE_BYTES,
                max_line=MAX_FILE_BYTES if suffix == ".json" else MAX_RECORD_BYTES)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path.name} is not UTF-8 text (byte {e.start}); save it as UTF-8 "
                           "and upload it again") from None
    if suffix == ".csv":
        return _read_csv(text)
    if suffix == ".json" or text.lstrip().startswith("["):
        return _read_json_array(text)
    return _read_jsonl(text)


def _read_jsonl(text: str) -> list[tuple[int, Any, str | None]]:
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((i, json.loads(line), None))
        except json.JSONDecodeError as e:
            out.append((i, None, f"bad JSON ({e.msg} at column {e.colno})"))
        except RecursionError:
            out.append((i, None, "nested too deeply to be a record"))
    return out


def _read_json_array(text: str) -> list[tuple[int, Any, str | None]]:
    """Walk a top-level JSON array element by element so each record keeps its line number."""
    dec = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            return [(e.lineno, None, f"bad JSON ({e.msg} at column {e.colno})")]
        except RecursionError:
            return [(1, None, "nested too deeply to be a record")]
        return [(1, obj, None)] if isinstance(obj, dict) else \
            [(1, None, "a JSON file must hold an array of records")]
    out: list[tuple[int, Any, str | None]] = []
    pos = _skip_ws(text, pos + 1)
    while pos < len(text) and text[pos] != "]":
        line = text.count("\n", 0, pos) + 1
        try:
            obj, pos = dec.raw_decode(text, pos)
        except RecursionError:
            out.append((line, None, "nested too deeply to be a record; the rest of the file "
                        "cannot be read"))
            return out
        except json.JSONDecodeError as e:
            out.append((e.lineno, None, f"bad JSON ({e.msg} at column {e.colno}); the rest of "
                        "the file cannot be read"))
            return out
        out.append((line, obj, None))
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        elif pos < len(text) and text[pos] != "]":
            line = text.count("\n", 0, pos) + 1
            out.append((line, None, "bad JSON (expected ',' or ']' between records)"))
            return out
    return out


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_csv(text: str) -> list[tuple[int, Any, str | None]]:
    lines = text.splitlines(keepends=True)
    reader = csv.DictReader(lines)
    out = []
    start = 2  # line 1 is the header
    for row in reader:
        rec = {k.strip(): (v or "") for k, v in row.items() if k is not None}
        out.append((start, rec, None))
        start = reader.line_num + 1
    return out


# ----- shapes -----------------------------------------------------------------------------------
def record_shape(rec: Any) -> str | None:
    """Which shape a record looks like, from its keys."""
    if not isinstance(rec, dict):
        return None
    if "messages" in rec:
        return "messages"
    if "conversations" in rec:
        return "sharegpt"
    if "instruction" in rec or ("output" in rec and "input" in rec):
        return "alpaca"
    if "prompt" in rec or "completion" in rec:
        return "prompt_completion"
    return None


def detect_shape(records: list[Any]) -> str:
    """The shape most records have; DatasetError when none is recognisable."""
    votes = Counter(s for s in (record_shape(r) for r in records) if s)
    if not votes:
        keys = sorted({k for r in records[:5] if isinstance(r, dict) for k in r})
        raise DatasetError("could not tell the data's shape from its fields "
                           f"{keys or '(none)'}; use alpaca (instruction/input/output), "
                           "messages, conversations (ShareGPT) or prompt/completion")
    return votes.most_common(1)[0][0]


def to_messages(rec: Any, shape: str) -> list[dict[str, str]]:
    """One record as chat messages; ValueError saying what is missing or empty."""
    if not isinstance(rec, dict):
        raise ValueError("record is not an object")
    if shape == "alpaca":
        instruction = _text(rec, "instruction")
        output = _text(rec, "output", answer=True)
        extra = str(rec.get("input") or "").strip()
        msgs = [{"role": "system", "content": str(rec["system"])}] if rec.get("system") else []
        user = instruction + ("\n\n" + extra if extra else "")
        return msgs + [{"role": "user", "content": user},
                       {"role": "assistant", "content": output}]
    if shape == "prompt_completion":
        return [{"role": "user", "content": _text(rec, "prompt")},
                {"role": "assistant", "content": _text(rec, "completion", answer=True)}]
    if shape == "messages":
        return _check_turns([_turn(m, "role", "content", None) for m in _list(rec, "messages")])
    if shape == "sharegpt":
        return _check_turns([_turn(m, "from", "value", _SHAREGPT_ROLES)
                             for m in _list(rec, "conversations")])
    raise ValueError(f"unknown shape {shape!r}")


def _text(rec: dict, key: str, answer: bool = False) -> str:
    if key not in rec or rec[key] is None:
        raise ValueError(f"missing field '{key}'")
    value = str(rec[key])
    if not value.strip():
        raise ValueError(f"empty {'output' if answer else 'field'} '{key}'")
    return value


def _list(rec: dict, key: str) -> list:
    value = rec.get(key)
    if not isinstance(value, list) or not value:
        raise ValueError(f"missing field '{key}' (a non-empty list of turns)")
    return value


def _turn(m: Any, role_key: str, text_key: str, role_map: dict[str, str] | None
          ) -> dict[str, str]:
    if not isinstance(m, dict) or role_key not in m or text_key not in m:
        raise ValueError(f"each turn needs '{role_key}' and '{text_key}'")
    role = str(m[role_key]).strip().lower()
    role = role_map.get(role, role) if role_map else role
    if role not in _ROLES:
        raise ValueError(f"unknown role {m[role_key]!r}")
    return {"role": role, "content": str(m[text_key] or "")}


def _check_turns(turns: list[dict[str, str]]) -> list[dict[str, str]]:
    answers = [t for t in turns if t["role"] == "assistant"]
    if not answers:
        raise ValueError("no assistant turn to learn from")
    if any(not t["content"].strip() for t in answers):
        raise ValueError("empty output (an assistant turn has no text)")
    if not any(t["role"] == "user" for t in turns):
        raise ValueError("no user turn")
    return turns


def load_records(path: str | Path) -> Dataset:
    """Read, detect the shape and normalize; every malformed record is listed with its line."""
    raw = read_raw(Path(path))
    if not raw:
        raise DatasetError(f"{Path(path).name} holds no records")
    shape = detect_shape([r for _, r, err in raw if err is None])
    ds = Dataset(path=str(path), shape=shape)
    for line, rec, err in raw:
        if err is not None:
            ds.problems.append(Problem(line, err))
            continue
        try:
            ds.conversations.append(to_messages(rec, shape))
            ds.lines.append(line)
        except ValueError as e:
            ds.problems.append(Problem(line, str(e)))
    return ds


def require_clean(ds: Dataset, skip_bad: bool) -> list[str]:
    """Notes for the log. Raises DatasetError listing the problems unless `skip_bad`."""
    if not ds.conversations:
        raise DatasetError("no usable records.\n" + ds.report())
    if ds.problems and not skip_bad:
        raise DatasetError("malformed records; fix the file or choose to skip them.\n"
                           + ds.report())
    if ds.problems:
        lines = ", ".join(str(p.line) for p in ds.problems[:50])
        return [f"skipped {len(ds.problems)} malformed record(s) of {Path(ds.path).name} at "
                f"line(s) {lines}"]
    return []


def split(ds: Dataset, eval_fraction: float, seed: int
          ) -> tuple[list[list[dict]], list[list[dict]]]:
    """A seeded train/eval split of the conversations (at least one eval example if asked)."""
    order = list(range(len(ds.conversations)))
    random.Random(seed).shuffle(order)
    n_eval = round(len(order) * eval_fraction) if eval_fraction > 0 else 0
    if eval_fraction > 0 and len(order) >= 2:
        n_eval = min(max(1, n_eval), len(order) - 1)
    ev, tr = order[:n_eval], order[n_eval:]
    return [ds.conversations[i] for i in tr], [ds.conversations[i] for i in ev]


# ----- templates and tokens ---------------------------------------------------------------------
def render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """Text as the model sees it: its chat template, or a plain fallback when it has none."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    parts = [f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in messages]
    text = "".join(parts)
    if add_generation_prompt:
        return text + "### Assistant:\n"
    if messages and messages[-1]["role"] == "assistant":
        text = text[:-2] + (tokenizer.eos_token or "")
    return text


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode(tokenizer: Any, messages: list[dict], max_len: int, train_on_prompt: bool = False
           ) -> dict[str, Any]:
    """input_ids and labels (IGNORE outside answers unless `train_on_prompt`), cut to max_len.

    Answer spans come from rendering each prefix: tokens between "prompt up to this assistant
    turn + generation prompt" and "conversation through this turn" are the answer (with its end
    token), which holds for templates that render prefixes as prefixes (Llama, Qwen, ChatML).
    """
    ids = _ids(tokenizer, render(tokenizer, messages))
    labels = list(ids) if train_on_prompt else [IGNORE] * len(ids)
    if not train_on_prompt:
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = len(_ids(tokenizer, render(tokenizer, messages[:i], True)))
            end = len(_ids(tokenizer, render(tokenizer, messages[:i + 1])))
            labels[start:end] = ids[start:end]
    length = len(ids)
    return {"input_ids": ids[:max_len], "labels": labels[:max_len], "length": length,
            "truncated": length > max_len}


def tokenize_all(tokenizer: Any, conversations: list[list[dict]], max_len: int,
                 train_on_prompt: bool = False) -> tuple[list[dict], list[str]]:
    """Encoded examples ready for training, and notes about what was cut or left out."""
    out, cut, empty = [], 0, 0
    for conv in conversations:
        ex = encode(tokenizer, conv, max_len, train_on_prompt)
        cut += ex["truncated"]
        if all(v == IGNORE for v in ex["labels"][1:]):
            empty += 1  # the whole answer lies past max_seq_length: nothing to learn from
            continue
        out.append({"input_ids": ex["input_ids"], "labels": ex["labels"]})
    notes = []
    if cut:
        notes.append(f"{cut} of {len(conversations)} examples are longer than {max_len} tokens "
                     "and were cut")
    if empty:
        notes.append(f"{empty} example(s) left out: their whole answer lies past {max_len} "
                     "tokens (raise max sequence length to keep them)")
    return out, notes


# ----- preview and histogram --------------------------------------------------------------------
def preview(tokenizer: Any, ds: Dataset, n: int = 3) -> str:
    """The first `n` conversations rendered exactly as training will see them."""
    blocks = [f"--- line {line} ---\n{render(tokenizer, conv)}"
              for conv, line in zip(ds.conversations[:n], ds.lines[:n], strict=False)]
    return "\n\n".join(blocks)


def token_lengths(tokenizer: Any, conversations: list[list[dict]]) -> list[int]:
    return [len(_ids(tokenizer, render(tokenizer, c))) for c in conversations]


def length_histogram(lengths: list[int], max_len: int, bins: int = 8) -> tuple[Any, int]:
    """A DataFrame (tokens bin label, examples, fits) for gr.BarPlot, and how many are cut.

    Bins split 0..max_len evenly; everything longer is one "over" bin, so the cut examples
    stand out.
    """
    import pandas as pd

    width = max(1, -(-max_len // bins))
    counts = [0] * bins
    over = 0
    for n in lengths:
        if n > max_len:
            over += 1
        else:
            counts[min(bins - 1, max(0, (n - 1) // width))] += 1
    rows = [{"tokens": f"{i * width + 1}-{min(max_len, (i + 1) * width)}", "examples": c,
             "fits": "fits"} for i, c in enumerate(counts)]
    rows.append({"tokens": f">{max_len}", "examples": over, "fits": "truncated"})
    return pd.DataFrame(rows), over
