"""Speaker turns from pyannote.audio, loaded through the studio's model manager.

Real users get the community pipeline from the hub with their token (the repository is gated:
accept its terms first) or a local copy of it. No pyannote weights exist offline; then the
tab says so and the transcript simply has no speakers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tabs.whisper.audio import SAMPLE_RATE
from tabs.whisper.speakers import Turn, rename_ids


class DiarizationUnavailable(RuntimeError):
    """No diarization pipeline could be loaded; the message says what to do."""


def run_pipeline(pipeline: Any, audio: np.ndarray, num_speakers: int | None = None,
                 min_speakers: int | None = None,
                 max_speakers: int | None = None) -> list[Turn]:
    """Apply a pyannote speaker-diarization pipeline to 16 kHz mono audio -> turns with ids
    SPEAKER_00.. in order of first appearance."""
    import torch

    kwargs = {k: v for k, v in (("num_speakers", num_speakers), ("min_speakers", min_speakers),
                                ("max_speakers", max_speakers)) if v}
    if num_speakers:
        kwargs.pop("min_speakers", None)
        kwargs.pop("max_speakers", None)
    file = {"waveform": torch.from_numpy(np.ascontiguousarray(audio))[None],
            "sample_rate": SAMPLE_RATE}
    out = pipeline(file, **kwargs)
    # pyannote 4 returns DiarizeOutput; the exclusive version has no overlapping turns, which
    # is what word-level assignment wants. pyannote 3 returns the Annotation itself.
    ann = getattr(out, "exclusive_speaker_diarization", None)
    if ann is None:
        ann = getattr(out, "speaker_diarization", out)
    duration = len(audio) / SAMPLE_RATE  # the last sliding window may reach past the end
    turns = [Turn(round(seg.start, 3), round(min(seg.end, duration), 3), str(label))
             for seg, _, label in ann.itertracks(yield_label=True) if seg.start < duration]
    return rename_ids(turns)


class PyannoteDiarizer:
    def __init__(self, studio: Any, source: str, token: str | None = None):
        self.studio = studio
        self.source = source
        self.token = token or None
        self.key = f"diarization:{source}"

    def _load(self, device: str) -> Any:
        import torch
        from pyannote.audio import Pipeline

        src = self.source
        if Path(src).is_dir() and (Path(src) / "config.yaml").exists():
            src = str(Path(src))
        try:
            pipe = Pipeline.from_pretrained(src, token=self.token,
                                            cache_dir=str(Path(self.studio.settings.cache_dir)
                                                          / "pyannote"))
        except Exception as e:  # hub errors come in many types; the message is what matters
            raise DiarizationUnavailable(
                f"could not load the diarization pipeline {self.source!r}: {e}. For the hub "
                "pipeline, accept its terms on huggingface.co and give your access token; or "
                "point to a local folder") from None
        if pipe is None:
            raise DiarizationUnavailable(
                f"{self.source!r} is gated or missing: accept its terms on huggingface.co and "
                "give your access token, or point to a local folder")
        return pipe.to(torch.device(device))

    def register(self) -> str:
        from studio.models import ModelSpec

        if not self.studio.models.is_registered(self.key):
            cuda = self.studio.device == "cuda"
            self.studio.models.register(ModelSpec(
                key=self.key, load=self._load, title="pyannote speaker diarization",
                estimate=int(0.2e9) if cuda else 0, reserve=int(0.8e9) if cuda else 0))
        return self.key

    def diarize(self, audio: np.ndarray, num_speakers: int | None = None,
                min_speakers: int | None = None,
                max_speakers: int | None = None) -> list[Turn]:
        with self.studio.models.use(self.register()) as pipe:
            return run_pipeline(pipe, audio, num_speakers, min_speakers, max_speakers)
