"""Decode any audio or video file to 16 kHz mono float32, with clear errors for bad input.

faster-whisper's `decode_audio` uses PyAV (FFmpeg's libraries), so mp3, m4a, flac, ogg, mp4,
mkv and webm all decode without a separate ffmpeg process. Where PyAV/faster-whisper are not
installed (a GPU box with only the transformers engine), PCM ``.wav`` files still decode with the
standard library. The same 16-bit wav helpers keep the copy the transcript view plays from.
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
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"no such file: {path.name}")
    check_extension(path)
    if path.stat().st_size == 0:
        raise AudioError(f"{path.name} is empty (0 bytes)")
    try:
        import av
        from faster_whisper.audio import decode_audio
    except ImportError:
        if path.suffix.lower() != ".wav":
            raise AudioError(f"{path.name}: decoding {path.suffix} needs PyAV "
                             "(pip install faster-whisper); only .wav works without it") from None
        return check_signal(read_wav(path), path.name)
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


def read_wav(path: Path) -> np.ndarray:
    """PCM wav (8/16/24/32-bit, any rate and channel count) -> 16 kHz mono float32 without
    FFmpeg; resampled with scipy's polyphase filter when the rate differs."""
    import wave
    from math import gcd

    try:
        with wave.open(str(path), "rb") as f:
            rate, channels, width = f.getframerate(), f.getnchannels(), f.getsampwidth()
            raw = f.readframes(f.getnframes())
    except (wave.Error, EOFError) as e:
        raise AudioError(f"{path.name} could not be decoded (not a PCM wav file): {e}") from None
    if width == 3:  # 24-bit: widen to 32-bit little-endian
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        raw = np.pad(b, ((0, 0), (1, 0))).tobytes()
        width = 4
    kinds = {1: ("u1", 128.0, 128.0), 2: ("<i2", 0.0, 32768.0), 4: ("<i4", 0.0, 2147483648.0)}
    dtype, zero, scale = kinds[width]
    audio = (np.frombuffer(raw, dtype).astype(np.float32) - zero) / scale
    audio = audio.reshape(-1, channels).mean(axis=1)
    if rate != SAMPLE_RATE:
        from scipy.signal import resample_poly

        g = gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)
    return audio


def write_wav(path: Path, audio: np.ndarray) -> Path:
    """16 kHz mono 16-bit PCM: what browsers play and what `read_wav_span` seeks in."""
    import wave

    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(np.round(np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes())
    return path


def read_wav_span(path: Path, start: float, seconds: float) -> np.ndarray:
    """`seconds` of a `write_wav` file from `start`, read by seeking: the cost is the span's,
    not the recording's, so an hour-long file answers as fast as a short one."""
    import wave

    with wave.open(str(path), "rb") as f:
        first = min(max(int(round(start * f.getframerate())), 0), f.getnframes())
        f.setpos(first)
        raw = f.readframes(int(round(seconds * f.getframerate())))
    return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
