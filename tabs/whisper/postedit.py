"""LLM post-edit: fix punctuation, casing and names (from a user glossary), chunk by chunk.

The model sees numbered segment texts only, and answers with the same numbered lines. Only the
text of a segment can change, never its times or speaker; an answer line that rewrites a segment
too much (more than casing, punctuation and a few words) is rejected, so a chatty model cannot
invent content. The user sees a diff and accepts it or not.
"""

from __future__ import annotations

import difflib
import html
import re
import threading
from dataclasses import dataclass, replace
from typing import Any

from tabs.whisper.transcript import Segment, Transcript, Word

LINE = re.compile(r"^\s*(\d+)\s*[|:.)]\s?(.*)$")
MIN_SIMILARITY = 0.6  # of lower-cased, punctuation-free words; lower = a rewrite, rejected

SYSTEM = ("You correct speech-to-text transcripts. Fix punctuation and capitalisation and the "
          "spelling of names and terms from the glossary. Do not add, remove, reorder or "
          "summarise content. Answer with exactly the same numbered lines, in the form "
          "'N| corrected text', and nothing else.")


@dataclass
class Edit:
    index: int  # segment index in the transcript
    old: str
    new: str


def _words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def similar_enough(old: str, new: str) -> bool:
    a, b = _words(old), _words(new)
    if not a or not b:
        return a == b
    return difflib.SequenceMatcher(a=a, b=b).ratio() >= MIN_SIMILARITY


def prompt_for(segments: list[tuple[int, str]], glossary: list[str]) -> list[dict]:
    lines = "\n".join(f"{i}| {text}" for i, text in segments)
    gl = ("Glossary (correct spellings): " + ", ".join(glossary) + "\n\n") if glossary else ""
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"{gl}Transcript lines:\n{lines}"}]


def parse_reply(reply: str, wanted: set[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for line in reply.splitlines():
        m = LINE.match(line)
        if m and int(m.group(1)) in wanted and m.group(2).strip():
            out.setdefault(int(m.group(1)), m.group(2).strip())
    return out


def propose_edits(transcript: Transcript, engine: Any, glossary: list[str] | None = None,
                  chunk_size: int = 12, stop: threading.Event | None = None,
                  settings: Any = None) -> list[Edit]:
    """Ask `engine` (a `studio.llm.LLMEngine`) for corrections, `chunk_size` segments at a
    time. Returns only real, accepted-looking changes."""
    from studio.llm import GenerationSettings

    settings = settings or GenerationSettings(temperature=0.0, max_new_tokens=1024)
    glossary = [g.strip() for g in (glossary or []) if g.strip()]
    edits: list[Edit] = []
    segs = transcript.segments
    for start in range(0, len(segs), chunk_size):
        if stop is not None and stop.is_set():
            break
        chunk = [(i + 1, segs[i].text) for i in range(start, min(start + chunk_size, len(segs)))]
        reply = engine.chat(prompt_for(chunk, glossary), settings, stop_event=stop).text
        got = parse_reply(reply, {n for n, _ in chunk})
        for n, old in chunk:
            new = got.get(n)
            if new and new != old and similar_enough(old, new):
                edits.append(Edit(n - 1, old, new))
    return edits


def _retext_words(words: list[Word], new_text: str) -> list[Word]:
    """Carry the edited spelling into the words when the count still matches one to one;
    otherwise keep the recognised words (their times stay right either way)."""
    tokens = new_text.split()
    if len(tokens) != len(words):
        return words
    return [replace(w, text=" " + t) for w, t in zip(words, tokens, strict=True)]


def apply_edits(transcript: Transcript, edits: list[Edit]) -> Transcript:
    """A copy of `transcript` with the edited texts; times and speakers untouched."""
    segs: list[Segment] = list(transcript.segments)
    for e in edits:
        s = segs[e.index]
        if s.text != e.old:
            continue  # the transcript changed since the proposal
        segs[e.index] = replace(s, text=e.new, words=_retext_words(s.words, e.new))
    return replace(transcript, segments=segs)


def diff_html(edits: list[Edit]) -> str:
    """Word-level diff: deletions struck through in red, insertions in green."""
    if not edits:
        return "<p>No changes proposed.</p>"
    rows = []
    for e in edits:
        a, b = e.old.split(), e.new.split()
        parts = []
        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b).get_opcodes():
            if op in ("delete", "replace"):
                parts.append(f"<del style='color:#c0392b'>{html.escape(' '.join(a[i1:i2]))}"
                             "</del>")
            if op in ("insert", "replace"):
                parts.append(f"<ins style='color:#1e8449'>{html.escape(' '.join(b[j1:j2]))}"
                             "</ins>")
            if op == "equal":
                parts.append(html.escape(" ".join(a[i1:i2])))
        rows.append(f"<li><small>#{e.index + 1}</small> {' '.join(parts)}</li>")
    return f"<ul class='whisper-diff'>{''.join(rows)}</ul>"
