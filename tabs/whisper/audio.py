"""Decode any audio or video file to 16 kHz mono float32, with clear errors for bad input.

faster-whisper's `decode_audio` uses PyAV (FFmpeg's libraries), so mp3, m4a, flac, ogg, mp4,
mkv and webm all decode without a separate ffmpeg process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
AUDIO_EXTS = {".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus", ".wma"}
VIDEO_EXTS = {".mp4", ".mkv", ".webm", ".mov", ".avi"}
SILENCE_RMS = 1e-4  # about -80 dBFS: digital silence or an unplugged microphone


class AudioError(ValueError):
    """The file cannot be transcribed; the message says why, in user terms."""


def check_extension(path: Path) -> None:
    ext = path.suffix.lower()
    if ext not in AUDIO_EXTS | VIDEO_EXTS:
        known = " ".join(sorted(AUDIO_EXTS | VIDEO_EXTS))
        raise AudioError(f"{path.name}: {ext or 'no extension'} is not an audio or video file "
                         f"this tab reads ({known})")


def load_audio(path: str | Path) -> np.ndarray:
    """Decode `path` to 16 kHz mono float32; raise `AudioError` for missing, corrupt, empty,
    audio-less or silent files."""
    import av
    from faster_whisper.audio import decode_audio

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"no such file: {path.name}")
    check_extension(path)
    if path.stat().st_size == 0:
        raise AudioError(f"{path.name} is empty (0 bytes)")
    try:
        audio = decode_audio(str(path), sampling_rate=SAMPLE_RATE)
    except IndexError:  # PyAV found no audio stream
        raise AudioError(f"{path.name} has no audio track") from None
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise AudioError(f"{path.name} could not be decoded (corrupt file or unsupported "
                         f"codec): {e}") from None
    return check_signal(audio, path.name)


def check_signal(audio: np.ndarray, name: str = "the recording") -> np.ndarray:
    if audio.size == 0:
        raise AudioError(f"{name} contains no audio samples")
    if audio.size < SAMPLE_RATE // 10:
        raise AudioError(f"{name} is too short ({audio.size / SAMPLE_RATE:.2f} s)")
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if rms < SILENCE_RMS:
        raise AudioError(f"{name} is silent ({audio.size / SAMPLE_RATE:.1f} s with no signal)")
    return audio.astype(np.float32, copy=False)
