"""Exports: SRT, WebVTT, plain text and JSON, all using the current speaker names."""

from __future__ import annotations

import json
from pathlib import Path

from tabs.whisper.transcript import Transcript

FORMATS = ("srt", "vtt", "txt", "json")


def timestamp(seconds: float, sep: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT) or with ``sep="."`` ``HH:MM:SS.mmm`` (WebVTT)."""
    ms = max(0, int(round(seconds * 1000)))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def clock(seconds: float) -> str:
    """Short ``M:SS`` / ``H:MM:SS`` for the transcript view and TXT."""
    s = int(seconds)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def wrap_two_lines(text: str, width: int = 42) -> str:
    """Split a long cue at the space nearest the middle so it reads as two lines."""
    if len(text) <= width:
        return text
    mid = len(text) // 2
    spaces = [i for i, c in enumerate(text) if c == " "]
    if not spaces:
        return text
    cut = min(spaces, key=lambda i: abs(i - mid))
    return text[:cut] + "\n" + text[cut + 1:]


def _ends(t: Transcript, i: int) -> tuple[float, float]:
    """Cue times; a zero-length cue is stretched so players show it."""
    s = t.segments[i]
    return s.start, max(s.end, s.start + 0.2)


def to_srt(t: Transcript) -> str:
    cues = []
    for i, s in enumerate(t.segments):
        start, end = _ends(t, i)
        who = t.name_of(s.speaker)
        text = f"[{who}] {s.text}" if who else s.text
        cues.append(f"{i + 1}\n{timestamp(start)} --> {timestamp(end)}\n{wrap_two_lines(text)}\n")
    return "\n".join(cues)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(t: Transcript) -> str:
    """WebVTT with ``<v Name>`` voice spans, which players use to show or style speakers."""
    cues = ["WEBVTT\n"]
    for i, s in enumerate(t.segments):
        start, end = _ends(t, i)
        text = _vtt_escape(wrap_two_lines(s.text))
        who = t.name_of(s.speaker)
        if who:
            text = f"<v {_vtt_escape(who)}>{text}</v>"
        cues.append(f"{timestamp(start, '.')} --> {timestamp(end, '.')}\n{text}\n")
    return "\n".join(cues)


PARAGRAPH_PAUSE_S = 2.0  # without speakers, a pause this long starts a new paragraph


def to_txt(t: Transcript) -> str:
    """One line per segment with its time; a paragraph per speaker turn (a blank line between,
    the name on its first line) or, without speakers, after a pause of `PARAGRAPH_PAUSE_S`."""
    out: list[str] = []
    prev = None
    for s in t.segments:
        new_para = prev is not None and (
            s.speaker != prev.speaker
            or (not s.speaker and s.start - prev.end >= PARAGRAPH_PAUSE_S))
        if new_para:
            out.append("")
        turn = s.speaker and (prev is None or s.speaker != prev.speaker)
        who = f"{t.name_of(s.speaker)}: " if turn else ""
        out.append(f"[{clock(s.start)}] {who}{s.text}")
        prev = s
    return "\n".join(out) + "\n"


def to_json(t: Transcript) -> str:
    """Segments with words, speaker ids and names, and confidences."""
    d = t.to_dict()
    for seg in d["segments"]:
        seg["speaker_name"] = t.name_of(seg["speaker"])
        for w in seg["words"]:
            w["speaker_name"] = t.name_of(w["speaker"])
    d["speakers"] = [{"id": s, "name": t.name_of(s)} for s in t.speakers]
    return json.dumps(d, ensure_ascii=False, indent=1)


WRITERS = {"srt": to_srt, "vtt": to_vtt, "txt": to_txt, "json": to_json}


def export(t: Transcript, fmt: str, folder: Path, stem: str = "transcript") -> Path:
    """Write `t` as `fmt` into `folder` and return the file path."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in WRITERS:
        raise ValueError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.{fmt}"
    path.write_text(WRITERS[fmt](t), "utf-8")
    return path
