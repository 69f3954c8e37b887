"""Play the recording from a transcript segment: a short cut of the saved 16 kHz copy.

Each transcript keeps the decoded audio as ``audio.wav`` (16-bit PCM, about 115 MB an hour).
A click on a segment reads `PLAY_WINDOW_S` seconds from the segment's start by seeking in that
file and writes them as a small wav the player autoplays: no FFmpeg process, no re-encode of the
whole recording, and the cut lines up sample for sample with the times the transcript shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tabs.whisper.audio import read_wav_span, write_wav

AUDIO_FILE = "audio.wav"
PLAY_WINDOW_S = 30.0  # enough context to hear; 0.96 MB, so the player has it at once
KEEP_CLIPS = 10  # cuts kept per transcript; older ones are deleted (Gradio serves its own copy)


def save_recording(audio: np.ndarray, folder: Path) -> Path:
    """Keep the decoded recording beside its transcript, for playback."""
    return write_wav(folder / AUDIO_FILE, audio)


def cut_from(recording: Path, start: float, out_dir: Path,
             seconds: float = PLAY_WINDOW_S) -> Path:
    """A wav of `seconds` from `start` (shorter at the end of the recording); reused when the
    same segment is clicked again."""
    if not recording.is_file():
        raise ValueError("this transcript has no saved recording to play; transcribe it again")
    ms = int(round(start * 1000))
    out = out_dir / f"from_{ms:09d}.wav"
    if not out.exists():
        part = read_wav_span(recording, start, seconds)
        if part.size == 0:
            raise ValueError(f"{start:.1f} s is past the end of the recording")
        tmp = write_wav(out.with_suffix(".part.wav"), part)
        tmp.replace(out)  # two quick clicks never see a half-written file
        prune(out_dir, keep=out)
    return out


def prune(out_dir: Path, keep: Path) -> None:
    """Delete all but the `KEEP_CLIPS` newest cuts, so clicking through an hour-long
    transcript does not fill the disk with 4 MB files."""
    clips = sorted(out_dir.glob("from_*.wav"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in clips[KEEP_CLIPS:]:
        if old != keep:
            old.unlink(missing_ok=True)

