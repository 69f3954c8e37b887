"""Training data for a Whisper fine-tune: recordings + transcripts -> checked <= 30 s pieces.

Sources, any mix of them in one dataset:
- a zip (or loose files) of audio with a same-named ``.txt``, ``.srt`` or ``.vtt`` next to each
  (``talk.wav`` + ``talk.srt``). Timed transcripts (srt/vtt) cut a long recording into pieces of
  at most 30 s at cue boundaries; a plain ``.txt`` is one piece, so its audio must be <= 30 s.
- a CSV or JSONL manifest inside the upload: one row per piece with ``path`` (or ``audio``,
  ``file``) and ``text`` (or ``transcript``, ``sentence``), optional ``speaker``, ``start`` and
  ``end`` (seconds). Paths are relative to the manifest and must stay inside the upload.
- transcripts corrected in the Transcribe tab: each segment becomes a pair.

Every rejected item has a reason (`Problem`); fixes that were applied (another sample rate
converted to 16 kHz) are notes. The result is a folder with ``pieces/*.wav`` (16 kHz mono),
``manifest.jsonl`` (one piece per line, with its ``split``) and ``summary.json``.
"""

from __future__ import annotations

import csv
import json
import random
import re
import secrets
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tabs.whisper.audio import (
    AUDIO_EXTS,
    SAMPLE_RATE,
    SILENCE_RMS,
    VIDEO_EXTS,
    AudioError,
    load_audio,
    write_wav,
)

MAX_PIECE_S = 30.0  # Whisper's window: a longer piece cannot be one training example
MIN_PIECE_S = 0.3
TRANSCRIPT_EXTS = (".srt", ".vtt", ".txt")  # preference order when several exist
MANIFEST_EXTS = {".csv", ".jsonl"}
PATH_KEYS = ("path", "audio", "file", "audio_path", "filename")
TEXT_KEYS = ("text", "transcript", "sentence", "transcription")
PAD_S = 0.15  # kept around a piece's cues where the neighbours leave room
MAX_MANIFEST_ROWS = 200_000  # a public link means hostile uploads


class DataError(ValueError):
    """Nothing usable in the upload; the message says why."""


@dataclass
class Cue:
    start: float | None  # None: untimed (a plain .txt or a manifest row without times)
    end: float | None
    text: str
    speaker: str | None = None


@dataclass
class Problem:
    """One rejected item and why, in user terms."""

    source: str
    reason: str


@dataclass
class Piece:
    audio: str  # path relative to the dataset folder
    text: str
    seconds: float
    source: str
    speaker: str = "unknown"
    start: float = 0.0  # where it was cut from in the source recording
    end: float = 0.0
    split: str = "train"
    cues: list[dict[str, Any]] = field(default_factory=list)  # times relative to the piece


@dataclass
class DatasetSummary:
    id: str
    folder: str
    pieces: int
    train: int
    heldout: int
    seconds: float
    speakers: dict[str, int]
    vocabulary: int
    top_words: list[str]
    name_like: list[str]  # capitalised words inside sentences: glossary candidates
    rejected: list[Problem]
    notes: list[str]

    @property
    def hours(self) -> float:
        return self.seconds / 3600

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hours": round(self.hours, 4)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> DatasetSummary:
        d = {k: v for k, v in d.items() if k != "hours"}
        d["rejected"] = [Problem(**p) for p in d.get("rejected", [])]
        return DatasetSummary(**d)

    def markdown(self) -> str:
        mins = self.seconds / 60
        lines = [f"**Dataset `{self.id}`:** {self.pieces} pieces, {self.hours:.2f} h "
                 f"({mins:.1f} min); {self.train} train, {self.heldout} held out",
                 f"**Speakers ({len(self.speakers)}):** " + ", ".join(
                     f"{k} ({v})" for k, v in sorted(self.speakers.items())),
                 f"**Vocabulary:** {self.vocabulary} distinct words; most frequent: "
                 + ", ".join(self.top_words[:12])]
        if self.name_like:
            lines.append("**Names and terms seen (glossary candidates):** "
                         + ", ".join(self.name_like[:20]))
        for n in self.notes:
            lines.append(f"- {n}")
        if self.rejected:
            lines.append(f"**{len(self.rejected)} item(s) left out:**")
            lines += [f"- `{p.source}`: {p.reason}" for p in self.rejected[:50]]
            if len(self.rejected) > 50:
                lines.append(f"- ... and {len(self.rejected) - 50} more")
        return "  \n".join(lines)


# ----- transcripts -----------------------------------------------------------------------------
_TIME = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{1,3})")
_TAG = re.compile(r"<[^>]*>")
_VOICE = re.compile(r"<v(?:\.[^ >]*)?\s+([^>]+)>")
_SRT_SPEAKER = re.compile(r"^\[([^\]]{1,60})\]\s*")


def _seconds(m: re.Match) -> float:
    h, mi, s, ms = m.groups()
    return int(h or 0) * 3600 + int(mi) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def parse_timed(text: str) -> list[Cue]:
    """SRT or WebVTT cues: times, text without markup, speaker from ``<v Name>`` (WebVTT) or a
    leading ``[Name]`` (the Transcribe tab's SRT)."""
    cues = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\ufeff", "")):
        lines = [ln.strip() for ln in block.strip().split("\n") if ln.strip()]
        for i, ln in enumerate(lines):
            if "-->" in ln:
                a, _, b = ln.partition("-->")
                ma, mb = _TIME.search(a), _TIME.search(b)
                if not (ma and mb):
                    break
                body = " ".join(lines[i + 1:])
                voice = _VOICE.search(body)
                speaker = voice.group(1).strip() if voice else None
                body = _TAG.sub("", body).strip()
                m = _SRT_SPEAKER.match(body)
                if m and speaker is None:
                    speaker, body = m.group(1).strip(), body[m.end():]
                cues.append(Cue(_seconds(ma), _seconds(mb), _clean(body), speaker))
                break
    return cues


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def read_transcript(path: Path) -> list[Cue]:
    raw = path.read_text("utf-8", errors="replace")
    if path.suffix.lower() == ".txt":
        return [Cue(None, None, _clean(raw))]
    return parse_timed(raw)


# ----- pieces ----------------------------------------------------------------------------------
def group_cues(cues: list[Cue], max_s: float = MAX_PIECE_S) -> tuple[list[list[Cue]],
                                                                     list[Cue]]:
    """Consecutive cues joined into pieces of at most `max_s` seconds, cut only between cues.
    Returns (groups, cues longer than `max_s` on their own)."""
    groups: list[list[Cue]] = []
    too_long: list[Cue] = []
    for c in sorted((c for c in cues if c.start is not None), key=lambda c: c.start):
        if c.end - c.start > max_s:
            too_long.append(c)
            continue
        if groups and c.end - groups[-1][0].start <= max_s and \
                c.speaker == groups[-1][-1].speaker:
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups, too_long


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


def source_rate(path: Path) -> int | None:
    """The file's own sample rate (to say it was converted), or None if it cannot be read."""
    try:
        import av

        with av.open(str(path)) as f:
            streams = f.streams.audio
            return int(streams[0].sample_rate) if streams else None
    except Exception:  # a probe failure is reported by the decoder, with its reason
        try:
            import wave

            with wave.open(str(path), "rb") as w:
                return w.getframerate()
        except Exception:
            return None


def clock(s: float) -> str:
    m, s = divmod(max(0.0, s), 60)
    return f"{int(m)}:{s:04.1f}"


class DatasetBuilder:
    """Collects pieces from any number of sources into one dataset folder."""

    def __init__(self, folder: Path, max_seconds: float = MAX_PIECE_S):
        self.folder = Path(folder)
        (self.folder / "pieces").mkdir(parents=True, exist_ok=True)
        self.max_s = max_seconds
        self.pieces: list[Piece] = []
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self.converted: Counter[int] = Counter()

    # one recording with its cues ------------------------------------------------------------
    def add_recording(self, audio_path: Path, cues: list[Cue], name: str,
                      speaker: str | None = None, audio: np.ndarray | None = None) -> int:
        """Cut one recording at its cues; returns how many pieces it gave."""
        if audio is None:
            try:
                audio = load_audio(audio_path)
            except AudioError as e:
                self.problems.append(Problem(name, f"unreadable or silent audio: {e}"))
                return 0
            rate = source_rate(audio_path)
            if rate and rate != SAMPLE_RATE:
                self.converted[rate] += 1
        duration = len(audio) / SAMPLE_RATE
        timed = [c for c in cues if c.start is not None]
        untimed = [c for c in cues if c.start is None]
        if not cues or not any(c.text for c in cues):
            self.problems.append(Problem(name, "empty text: the transcript has no words"))
            return 0
        if untimed:  # the whole file is one piece
            text = _clean(" ".join(c.text for c in untimed))
            if duration > self.max_s:
                self.problems.append(Problem(name, f"piece over {self.max_s:.0f} s "
                                     f"({duration:.1f} s) and the transcript has no times to "
                                     "cut it at: give an .srt/.vtt, or cut the audio"))
                return 0
            return self._add(audio, 0.0, duration, [Cue(0.0, duration, text)], name,
                             speaker or (untimed[0].speaker))
        groups, too_long = group_cues(timed, self.max_s)
        for c in too_long:
            self.problems.append(Problem(f"{name} {clock(c.start)}", f"piece over "
                                 f"{self.max_s:.0f} s ({c.end - c.start:.1f} s in one cue): "
                                 "split that cue"))
        made = 0
        for i, g in enumerate(groups):
            start, end = g[0].start, g[-1].end
            if start >= duration:
                self.problems.append(Problem(f"{name} {clock(start)}", "cue starts after the "
                                     f"end of the audio ({duration:.1f} s)"))
                continue
            prev_end = groups[i - 1][-1].end if i else 0.0
            next_start = groups[i + 1][0].start if i + 1 < len(groups) else duration
            a = max(prev_end, start - PAD_S, 0.0)
            b = min(next_start, end + PAD_S, duration, a + self.max_s)
            made += self._add(audio, a, b, g, f"{name} {clock(start)}",
                              speaker or g[0].speaker)
        return made

    def _add(self, audio: np.ndarray, a: float, b: float, cues: list[Cue], name: str,
             speaker: str | None) -> int:
        text = _clean(" ".join(c.text for c in cues))
        if not text:
            self.problems.append(Problem(name, "empty text"))
            return 0
        part = audio[int(a * SAMPLE_RATE):int(b * SAMPLE_RATE)]
        secs = len(part) / SAMPLE_RATE
        if secs < MIN_PIECE_S:
            self.problems.append(Problem(name, f"too short ({secs:.2f} s)"))
            return 0
        if rms(part) < SILENCE_RMS:
            self.problems.append(Problem(name, f"silent audio ({secs:.1f} s with no signal)"))
            return 0
        rel = f"pieces/{len(self.pieces):05d}.wav"
        write_wav(self.folder / rel, part)
        self.pieces.append(Piece(
            audio=rel, text=text, seconds=round(secs, 3), source=name,
            speaker=(speaker or "unknown").strip() or "unknown", start=round(a, 3),
            end=round(b, 3),
            cues=[{"start": round(max(0.0, c.start - a), 2),
                   "end": round(min(secs, c.end - a), 2), "text": c.text} for c in cues]))
        return 1

    # folders, manifests, transcripts -----------------------------------------------------------
    def add_folder(self, root: Path) -> None:
        """Every manifest in `root`, then every audio file with a same-named transcript."""
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
                       and not any(part.startswith(("__MACOSX", ".")) for part in
                                   p.relative_to(root).parts))
        used: set[Path] = set()
        for m in (p for p in files if p.suffix.lower() in MANIFEST_EXTS):
            used |= self.add_manifest(m, root)
            used.add(m)
        media = AUDIO_EXTS | VIDEO_EXTS
        stems: dict[Path, list[Path]] = {}
        for p in files:
            if p not in used:
                stems.setdefault(p.with_suffix(""), []).append(p)
        for stem, group in stems.items():
            audio = [p for p in group if p.suffix.lower() in media]
            texts = {p.suffix.lower(): p for p in group if p.suffix.lower() in TRANSCRIPT_EXTS}
            rel = str(stem.relative_to(root))
            if not audio:
                if texts:
                    self.problems.append(Problem(rel + next(iter(texts)), "transcript without "
                                         "audio: no recording of the same name"))
                else:
                    for p in group:
                        self.problems.append(Problem(str(p.relative_to(root)), "not audio, "
                                             "a transcript (.txt/.srt/.vtt) or a manifest "
                                             "(.csv/.jsonl)"))
                continue
            if not texts:
                for p in audio:
                    self.problems.append(Problem(str(p.relative_to(root)), "missing "
                                         f"transcript: expected {stem.name}.txt, .srt or .vtt "
                                         "next to it"))
                continue
            tpath = next(texts[e] for e in TRANSCRIPT_EXTS if e in texts)
            cues = read_transcript(tpath)
            if tpath.suffix.lower() != ".txt" and not cues:
                self.problems.append(Problem(str(tpath.relative_to(root)), "no timed cues "
                                     "found (is it really SRT/WebVTT?)"))
                continue
            folder_speaker = stem.parent.name if stem.parent != root else None
            self.add_recording(audio[0], cues, str(audio[0].relative_to(root)),
                               speaker=None if any(c.speaker for c in cues) else folder_speaker)

    def add_manifest(self, path: Path, root: Path) -> set[Path]:
        """Rows of a CSV/JSONL manifest; returns the audio files it used."""
        name = str(path.relative_to(root))
        try:
            rows = read_manifest(path)
        except DataError as e:
            self.problems.append(Problem(name, str(e)))
            return set()
        used: set[Path] = set()
        by_file: dict[Path, list[tuple[int, Cue]]] = {}
        base = path.parent.resolve()
        top = root.resolve()
        for n, row in rows:
            where = f"{name} row {n}"
            rel, text = row.get("path", ""), row.get("text", "")
            if not rel:
                self.problems.append(Problem(where, "no audio path (columns: "
                                     f"{'/'.join(PATH_KEYS)})"))
                continue
            audio = (base / rel).resolve()
            if not audio.is_relative_to(top) or Path(rel).is_absolute():
                self.problems.append(Problem(where, f"{rel}: the path leaves the upload; "
                                     "paths must be relative, inside the zip"))
                continue
            if not audio.is_file():
                self.problems.append(Problem(where, f"{rel}: no such audio file in the upload"))
                continue
            if not _clean(text):
                self.problems.append(Problem(where, "empty text"))
                continue
            try:
                start = float(row["start"]) if row.get("start") not in (None, "") else None
                end = float(row["end"]) if row.get("end") not in (None, "") else None
            except ValueError:
                self.problems.append(Problem(where, "start/end are not numbers of seconds"))
                continue
            if (start is None) != (end is None) or (start is not None and end <= start):
                self.problems.append(Problem(where, "give both start and end, end after start"))
                continue
            by_file.setdefault(audio, []).append((n, Cue(start, end, _clean(text),
                                                         row.get("speaker") or None)))
            used.add(audio)
        for audio, cues in by_file.items():
            rel = str(audio.relative_to(top))
            timed = [c for _, c in cues if c.start is not None]
            untimed = [c for _, c in cues if c.start is None]
            if timed:
                self.add_recording(audio, timed, rel)
            for c in untimed:  # each untimed row is a whole file
                self.add_recording(audio, [c], rel, speaker=c.speaker)
        return used

    def add_transcript(self, transcript: Any, audio_path: Path) -> int:
        """A Transcribe-tab transcript (corrected or not): each segment becomes a pair."""
        cues = [Cue(s.start, s.end, s.text, transcript.name_of(s.speaker) or None)
                for s in transcript.segments]
        name = f"transcript {transcript.id or transcript.source}"
        if not cues:
            self.problems.append(Problem(name, "the transcript has no segments"))
            return 0
        try:
            audio = load_audio(audio_path)
        except AudioError as e:
            self.problems.append(Problem(name, f"unreadable or silent audio: {e}"))
            return 0
        made = 0
        for c in cues:  # one pair per segment: no joining, the user corrected them one by one
            made += self.add_recording(audio_path, [c], f"{name} {clock(c.start)}",
                                       speaker=c.speaker, audio=audio)
        return made

    # the end ----------------------------------------------------------------------------------
    def finish(self, heldout_fraction: float = 0.1, seed: int = 0) -> DatasetSummary:
        for rate, n in sorted(self.converted.items()):
            self.notes.append(f"{n} file(s) at {rate} Hz converted to 16 kHz mono")
        if not self.pieces:
            reasons = "; ".join(f"{p.source}: {p.reason}" for p in self.problems[:5])
            raise DataError("no usable piece in the upload" + (f" ({reasons})" if reasons
                                                                else ""))
        order = list(range(len(self.pieces)))
        random.Random(seed).shuffle(order)
        n_held = 0
        if heldout_fraction > 0 and len(self.pieces) >= 2:
            n_held = min(len(self.pieces) - 1, max(1, round(heldout_fraction * len(order))))
        for i in order[:n_held]:
            self.pieces[i].split = "heldout"
        if n_held == 0:
            self.notes.append("no held-out pieces: WER cannot be measured (add more pieces or "
                              "raise the held-out share)")
        with open(self.folder / "manifest.jsonl", "w", encoding="utf-8") as f:
            for p in self.pieces:
                f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")
        words = Counter(w for p in self.pieces for w in words_of(p.text))
        summary = DatasetSummary(
            id=self.folder.name, folder=str(self.folder), pieces=len(self.pieces),
            train=len(self.pieces) - n_held, heldout=n_held,
            seconds=round(sum(p.seconds for p in self.pieces), 2),
            speakers=dict(Counter(p.speaker for p in self.pieces)), vocabulary=len(words),
            top_words=[w for w, _ in words.most_common(30)],
            name_like=name_like_words(p.text for p in self.pieces),
            rejected=self.problems, notes=self.notes)
        (self.folder / "summary.json").write_text(json.dumps(summary.to_dict(), indent=1,
                                                             ensure_ascii=False))
        return summary


def words_of(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def name_like_words(texts: Any) -> list[str]:
    """Capitalised words that do not start a sentence: names and jargon, most frequent first."""
    seen: Counter[str] = Counter()
    for t in texts:
        for m in re.finditer(r"(?<![.!?]\s)(?<!^)\b([A-Z][\w'-]+)", t):
            if m.group(1) != "I":
                seen[m.group(1)] += 1
    return [w for w, _ in seen.most_common(40)]


def read_manifest(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(row number, {path, text, speaker, start, end}) from a CSV (header row) or JSONL."""
    rows: list[tuple[int, dict[str, Any]]] = []
    if path.suffix.lower() == ".jsonl":
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise DataError(f"line {n} is not JSON") from None
                if not isinstance(rec, dict):
                    raise DataError(f"line {n} is not a JSON object")
                rows.append((n, rec))
                if len(rows) > MAX_MANIFEST_ROWS:
                    raise DataError(f"more than {MAX_MANIFEST_ROWS} rows")
    else:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            reader = csv.DictReader(f)
            for n, rec in enumerate(reader, 2):
                rows.append((n, rec))
                if len(rows) > MAX_MANIFEST_ROWS:
                    raise DataError(f"more than {MAX_MANIFEST_ROWS} rows")
    if not rows:
        raise DataError("the manifest has no rows")
    keys = {k.strip().lower() for k in rows[0][1] if isinstance(k, str)}
    pk = next((k for k in PATH_KEYS if k in keys), None)
    tk = next((k for k in TEXT_KEYS if k in keys), None)
    if pk is None or tk is None:
        raise DataError("a manifest needs a path column (" + "/".join(PATH_KEYS) + ") and a "
                        "text column (" + "/".join(TEXT_KEYS) + f"); found {sorted(keys)}")
    out = []
    for n, rec in rows:
        low = {str(k).strip().lower(): v for k, v in rec.items() if k is not None}
        out.append((n, {"path": str(low.get(pk) or "").strip(),
                        "text": str(low.get(tk) or ""),
                        "speaker": str(low.get("speaker") or "").strip(),
                        "start": low.get("start"), "end": low.get("end")}))
    return out


# ----- uploads ---------------------------------------------------------------------------------
def unpack_upload(files: list[Path], dest: Path, budget: int | None = None) -> list[Problem]:
    """Copy uploaded files into `dest`, unpacking zips with `studio.safety.safe_extract` (no
    paths outside `dest`, no links, zip bombs refused by size and ratio). Returns problems with
    the upload itself."""
    import shutil

    from studio import safety

    problems = []
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        f = Path(f)
        if f.suffix.lower() == ".zip":
            try:
                _, notes = safety.safe_extract(f, dest / f.stem,
                                               budget=budget or safety.DEFAULT_EXTRACT_BUDGET)
            except ValueError as e:  # not a zip, or refused (too large, a bomb)
                problems.append(Problem(f.name, str(e)))
                continue
            for n in notes:
                where, _, why = n.partition(": ")
                problems.append(Problem(where, why or n))
        elif f.is_file():
            shutil.copyfile(f, dest / Path(f.name).name)
        else:
            problems.append(Problem(f.name, "no such file"))
    return problems


def new_dataset_id() -> str:
    return "wds-" + secrets.token_hex(6)


def prepare_dataset(root: Path, files: list[Path] = (), transcripts: list[tuple[Any, Path]] = (),
                    heldout_fraction: float = 0.1, seed: int = 0,
                    max_seconds: float = MAX_PIECE_S,
                    extract_budget: int | None = None) -> DatasetSummary:
    """Build one dataset under `root/<new id>/` from uploads and Transcribe-tab transcripts."""
    if not files and not transcripts:
        raise DataError("give recordings with transcripts (a zip, files or a manifest) or a "
                        "transcript from the Transcribe tab")
    if not 0 <= heldout_fraction < 0.9:
        raise DataError("the held-out share must be in [0, 0.9)")
    folder = Path(root) / new_dataset_id()
    builder = DatasetBuilder(folder, max_seconds)
    if files:
        staged = folder / "upload"
        builder.problems += unpack_upload(list(files), staged, extract_budget)
        builder.add_folder(staged)
    for t, audio in transcripts:
        builder.add_transcript(t, audio)
    import shutil

    try:
        return builder.finish(heldout_fraction, seed)
    except DataError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(folder / "upload", ignore_errors=True)  # the pieces are what is kept


def load_pieces(folder: Path) -> list[Piece]:
    path = Path(folder) / "manifest.jsonl"
    if not path.is_file():
        raise DataError(f"no dataset at {folder}: prepare one first")
    with open(path, encoding="utf-8") as f:
        return [Piece(**json.loads(line)) for line in f if line.strip()]


def load_summary(folder: Path) -> DatasetSummary:
    return DatasetSummary.from_dict(json.loads((Path(folder) / "summary.json").read_text()))
