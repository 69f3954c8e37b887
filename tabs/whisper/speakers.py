"""Who spoke when: words to speaker turns, and words to readable segments.

The diarizer (pyannote) gives speaker turns; the ASR gives timed words. Each word takes the
speaker whose turns overlap it most; a word in a gap between turns takes the nearest turn if it
is close, so short pauses do not produce unlabelled words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from tabs.whisper.transcript import Segment, Word

SENTENCE_END = (".", "?", "!")


@dataclass(frozen=True)
class Turn:
    start: float
    end: float
    speaker: str


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def speaker_for(start: float, end: float, turns: Sequence[Turn],
                max_distance: float = 1.0) -> str | None:
    """The speaker with the most overlap with [start, end] (summed over their turns); with no
    overlap, the speaker of the nearest turn within `max_distance` seconds; else None."""
    totals: dict[str, float] = {}
    for t in turns:
        o = overlap(start, end, t.start, t.end)
        if o > 0:
            totals[t.speaker] = totals.get(t.speaker, 0.0) + o
    if totals:
        return max(totals, key=lambda s: totals[s])
    best, best_d = None, max_distance
    for t in turns:
        d = max(t.start - end, start - t.end, 0.0)
        if d <= best_d:
            best, best_d = t.speaker, d
    return best


def assign_speakers(words: Sequence[Word], turns: Sequence[Turn],
                    max_distance: float = 1.0) -> list[Word]:
    """Copies of `words` with ``speaker`` set from `turns` (see `speaker_for`)."""
    return [replace(w, speaker=speaker_for(w.start, w.end, turns, max_distance)) for w in words]


def join_words(words: Sequence[Word]) -> str:
    """Whisper words carry their leading space (" hello"); join them as they came."""
    return "".join(w.text for w in words).strip()


def _segment(words: list[Word]) -> Segment:
    probs = [w.probability for w in words if w.probability is not None]
    return Segment(start=words[0].start, end=words[-1].end, text=join_words(words),
                   speaker=words[0].speaker, words=list(words),
                   confidence=round(sum(probs) / len(probs), 4) if probs else None)


def merge_words(words: Sequence[Word], max_gap: float = 1.0, max_chars: int = 84,
                max_seconds: float = 7.0) -> list[Segment]:
    """Consecutive words into segments, sized for subtitles (two lines of 42 characters).

    A new segment starts when the speaker changes, after a silence longer than `max_gap`, or
    when the segment would grow past `max_chars` / `max_seconds`; a segment that already ended
    a sentence and is at least half full also closes, so subtitles break at full stops.
    """
    segments: list[Segment] = []
    cur: list[Word] = []
    for w in words:
        if cur:
            text = join_words(cur)
            if (w.speaker != cur[-1].speaker or w.start - cur[-1].end > max_gap
                    or len(text) + len(w.text) > max_chars
                    or w.end - cur[0].start > max_seconds
                    or (text.endswith(SENTENCE_END) and len(text) >= max_chars // 2)):
                segments.append(_segment(cur))
                cur = []
        cur.append(w)
    if cur:
        segments.append(_segment(cur))
    return segments


def label_segments(segments: Sequence[Segment], turns: Sequence[Turn]) -> list[Segment]:
    """Speakers for segments that have no word timings (word timestamps off)."""
    return [replace(s, speaker=speaker_for(s.start, s.end, turns)) for s in segments]


def rename_ids(turns: Sequence[Turn]) -> list[Turn]:
    """Speaker labels as SPEAKER_00, SPEAKER_01... in order of first appearance."""
    order: dict[str, str] = {}
    out = []
    for t in sorted(turns, key=lambda t: t.start):
        order.setdefault(t.speaker, f"SPEAKER_{len(order):02d}")
        out.append(Turn(t.start, t.end, order[t.speaker]))
    return out
