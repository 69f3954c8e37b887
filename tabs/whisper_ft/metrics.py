"""What a fine-tune is judged by: WER on the held-out pieces, the pieces whose transcript changed
most, and how often the glossary's names and terms come out right (recall)."""

from __future__ import annotations

import re
from typing import Any


def normalise(text: str) -> str:
    """Lower case, punctuation removed, single spaces: WER counts words, not commas."""
    text = re.sub(r"[^\w\s']|(?<!\w)'|'(?!\w)", " ", text.lower())
    return re.sub(r"\s+", " ", text).strip()


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus word error rate (errors over all reference words), after `normalise`."""
    import jiwer

    pairs = [(normalise(r), normalise(h)) for r, h in zip(refs, hyps, strict=True)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return 0.0
    out = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
    return float(out.wer)


def piece_wer(ref: str, hyp: str) -> float:
    return wer([ref], [hyp])


def most_changed(refs: list[str], before: list[str], after: list[str],
                 limit: int = 20) -> list[dict[str, Any]]:
    """Pieces whose WER moved most between the base and the tuned model, largest first; a tie
    puts the longer reference first (more evidence)."""
    rows = []
    for r, b, a in zip(refs, before, after, strict=True):
        wb, wa = piece_wer(r, b), piece_wer(r, a)
        if normalise(b) != normalise(a):
            rows.append({"reference": r, "before": b, "after": a, "wer_before": round(wb, 4),
                         "wer_after": round(wa, 4), "change": round(wa - wb, 4)})
    rows.sort(key=lambda x: (-abs(x["change"]), -len(x["reference"])))
    return rows[:limit]


def _count(term: list[str], words: list[str]) -> int:
    n = len(term)
    return sum(1 for i in range(len(words) - n + 1) if words[i:i + n] == term)


def glossary_recall(terms: list[str], refs: list[str], hyps: list[str]) -> dict[str, Any]:
    """For each term: how many times the references say it and how many of those the
    transcripts got (per piece, at most as often as the reference says it). Terms the held-out
    references never contain are listed apart: they cannot be measured."""
    per_term: dict[str, dict[str, int | float | None]] = {}
    total_ref = total_hit = 0
    for term in terms:
        t = normalise(term).split()
        if not t:
            continue
        ref_n = hit = 0
        for r, h in zip(refs, hyps, strict=True):
            n = _count(t, normalise(r).split())
            ref_n += n
            hit += min(n, _count(t, normalise(h).split()))
        per_term[term] = {"in_references": ref_n, "recalled": hit,
                          "recall": round(hit / ref_n, 4) if ref_n else None}
        total_ref += ref_n
        total_hit += hit
    return {"recall": round(total_hit / total_ref, 4) if total_ref else None,
            "occurrences": total_ref, "recalled": total_hit, "terms": per_term,
            "not_in_heldout": [k for k, v in per_term.items() if not v["in_references"]]}
