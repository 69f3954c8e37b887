"""Post-edit: glossary fixes that need no model, then an LLM for punctuation, casing and names.

Glossary fixes come first and need no model: every run of one to three words is compared with
each glossary term by sound-alike spelling (``Cuban Eats`` -> ``Kubernetes``, ``post-gus`` ->
``Postgres``), see `glossary_edits`. The LLM then works on the glossary-fixed text, chunk by
chunk, when the chat model is big enough to help (`too_small`).

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
from pathlib import Path
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
                  settings: Any = None,
                  on_chunk: Any = None) -> list[Edit]:
    """Ask `engine` (a `studio.llm.LLMEngine`) for corrections, `chunk_size` segments at a
    time. Returns only real, accepted-looking changes. `on_chunk(done, total)` is called
    before each chunk and at the end."""
    from studio.llm import GenerationSettings

    settings = settings or GenerationSettings(temperature=0.0, max_new_tokens=1024)
    glossary = [g.strip() for g in (glossary or []) if g.strip()]
    edits: list[Edit] = []
    segs = transcript.segments
    total = (len(segs) + chunk_size - 1) // chunk_size
    for start in range(0, len(segs), chunk_size):
        if on_chunk is not None:
            on_chunk(start // chunk_size, total)
        if stop is not None and stop.is_set():
            break
        chunk = [(i + 1, segs[i].text) for i in range(start, min(start + chunk_size, len(segs)))]
        reply = engine.chat(prompt_for(chunk, glossary), settings, stop_event=stop).text
        got = parse_reply(reply, {n for n, _ in chunk})
        for n, old in chunk:
            new = got.get(n)
            if new and new != old and similar_enough(old, new):
                edits.append(Edit(n - 1, old, new))
    if on_chunk is not None:
        on_chunk(total, total)
    return edits


# ----- glossary fixes without a model -------------------------------------------------------------
GLOSSARY_MIN_SCORE = 0.8  # of `term_score`; 'post-gus'/'Postgres' 0.85, 'progress' 0.76
_SOUNDS = (("ph", "f"), ("ck", "k"), ("c", "k"), ("q", "k"), ("z", "s"), ("x", "ks"),
           ("w", "v"), ("y", "i"))


def sound_key(text: str) -> str:
    """Letters only, lower case, with letters that sound alike merged and doubles collapsed:
    a rough spelling-by-ear that ASR errors tend to keep ('Cuban Eats' ~ 'Kubernetes')."""
    k = re.sub(r"[^a-z]", "", text.lower())
    for a, b in _SOUNDS:
        k = k.replace(a, b)
    return re.sub(r"(.)\1+", r"\1", k)


def term_score(text: str, term: str) -> float:
    """0..1: how much `text` sounds like `term`: the mean of the similarity of their sound keys
    and of their consonant skeletons (first letter + consonants), which vowel errors keep."""
    a, b = sound_key(text), sound_key(term)
    if not a or not b or a[0] != b[0] or not 0.6 <= len(a) / len(b) <= 1.5:
        return 0.0
    if a == b:
        return 1.0

    def skeleton(k: str) -> str:
        return k[0] + re.sub(r"[aeiou]", "", k[1:])

    r1 = difflib.SequenceMatcher(a=a, b=b).ratio()
    r2 = difflib.SequenceMatcher(a=skeleton(a), b=skeleton(b)).ratio()
    return (r1 + r2) / 2


_EDGE = re.compile(r"^([\"'(\[]*)(.*?)([\"').,;:!?\]]*)$", re.S)


def fix_glossary(text: str, glossary: list[str], min_score: float = GLOSSARY_MIN_SCORE) -> str:
    """`text` with each run of 1-3 words that sounds like a glossary term replaced by the term
    (best matches first, never overlapping); punctuation around the run is kept."""
    terms = [g.strip() for g in glossary if g.strip()]
    if not terms:
        return text
    toks = list(re.finditer(r"\S+", text))
    found: list[tuple[float, int, int, str]] = []  # score, first token, last token, term
    for i in range(len(toks)):
        for n in (1, 2, 3):
            j = i + n - 1
            if j >= len(toks):
                break
            span = text[toks[i].start():toks[j].end()]
            core = _EDGE.match(span).group(2)
            for term in terms:
                if core == term:
                    continue
                score = 1.0 if core.lower() == term.lower() else term_score(core, term)
                if score >= min_score:
                    found.append((score, i, j, term))
    used: set[int] = set()
    chosen: list[tuple[int, int, str]] = []
    for _score, i, j, term in sorted(found, key=lambda f: (-f[0], f[2] - f[1])):
        if used.isdisjoint(range(i, j + 1)):
            used.update(range(i, j + 1))
            chosen.append((i, j, term))
    out = text
    for i, j, term in sorted(chosen, reverse=True):  # right to left: offsets stay valid
        a, b = toks[i].start(), toks[j].end()
        m = _EDGE.match(out[a:b])
        out = out[:a] + m.group(1) + term + m.group(3) + out[b:]
    return out


def glossary_edits(transcript: Transcript, glossary: list[str]) -> list[Edit]:
    """The glossary fixes of every segment, as edits (no model needed)."""
    edits = []
    for i, s in enumerate(transcript.segments):
        new = fix_glossary(s.text, glossary)
        if new != s.text:
            edits.append(Edit(i, s.text, new))
    return edits


def combine(first: list[Edit], then: list[Edit]) -> list[Edit]:
    """Edits of the original transcript: `then` was proposed on the text after `first`."""
    out = {e.index: e for e in first}
    for e in then:
        base = out.get(e.index)
        out[e.index] = Edit(e.index, base.old if base else e.old, e.new)
    return [out[i] for i in sorted(out)]


SMALL_LLM_PARAMS = 1e9  # below this, chat models rewrite or ignore transcripts more than fix them


def model_params(*names: str) -> float | None:
    """Parameters a model's name states ('SmolLM2-135M' -> 1.35e8, 'Llama-3.1-8B' -> 8e9)."""
    for name in names:
        m = re.search(r"(?<![\w.])(\d+(?:\.\d+)?)\s*([MB])(?![a-z])", name or "", re.I)
        if m and not re.search(r"\d\s*[MB]-?bit", name or "", re.I):
            return float(m.group(1)) * (1e6 if m.group(2).upper() == "M" else 1e9)
    return None


def too_small(title: str, source: str = "") -> str:
    """Why the chat model is too small to help a transcript, or '' when it is not (or unknown)."""
    n = model_params(title, Path(source).name if source else "")
    if n is None or n >= SMALL_LLM_PARAMS:
        return ""
    size = f"{n / 1e6:.0f}M" if n < 1e9 else f"{n / 1e9:.1f}B"
    return (f"The chat model {title} ({size} parameters) is too small to correct transcripts: "
            "it rewrites or ignores them. Only the glossary fixes (no model needed) are "
            "proposed; choose a chat model of 1B parameters or more on the Models tab for LLM "
            "corrections.")


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
