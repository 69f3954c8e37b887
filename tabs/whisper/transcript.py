"""The transcript: timed words grouped into speaker segments, plus speaker display names.

Speaker ids (``SPEAKER_00``) never change; renaming only changes ``names``, so every export
written after a rename uses the new name.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Word:
    start: float
    end: float
    text: str
    probability: float | None = None
    speaker: str | None = None


@dataclass
class Segment:
    start: float
    end: float
    text: str
    speaker: str | None = None
    words: list[Word] = field(default_factory=list)
    confidence: float | None = None  # mean word probability, when the engine gives one


@dataclass
class Transcript:
    segments: list[Segment]
    language: str = ""
    duration: float = 0.0
    engine: str = ""
    model: str = ""
    names: dict[str, str] = field(default_factory=dict)  # speaker id -> display name
    notes: list[str] = field(default_factory=list)
    source: str = ""
    id: str = ""  # folder name under the service's root; set when transcribed
    diarizer: str = ""  # who found the speakers: 'pyannote', 'weak' (offline fallback) or ''

    @property
    def speakers(self) -> list[str]:
        """Speaker ids in order of first appearance."""
        seen: list[str] = []
        for s in self.segments:
            if s.speaker and s.speaker not in seen:
                seen.append(s.speaker)
        return seen

    def name_of(self, speaker: str | None) -> str:
        if not speaker:
            return ""
        return self.names.get(speaker, speaker)

    def rename(self, speaker: str, name: str) -> None:
        """Give `speaker` (an id, or its current display name) a new display name."""
        name = name.strip()
        if not name:
            raise ValueError("the new speaker name is empty")
        ids = {self.name_of(s): s for s in self.speakers}
        sid = speaker if speaker in self.speakers else ids.get(speaker)
        if sid is None:
            raise ValueError(f"no speaker {speaker!r} in this transcript "
                             f"(speakers: {', '.join(ids) or 'none'})")
        self.names[sid] = name

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments).strip()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Transcript:
        segs = [Segment(**{**s, "words": [Word(**w) for w in s.get("words", [])]})
                for s in d.get("segments", [])]
        return Transcript(**{**d, "segments": segs})

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), "utf-8")
        return path

    @staticmethod
    def load(path: Path) -> Transcript:
        return Transcript.from_dict(json.loads(path.read_text("utf-8")))
