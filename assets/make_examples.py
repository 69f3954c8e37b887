"""Redraw the example inputs in assets/ that are binary (run from the repo root):

    .venv/bin/python assets/make_examples.py

- yolo/shapes-*.png: circles and squares drawn like the YOLO tab's starter dataset
  (tabs.yolo.synthetic) at its size, so a model trained on that set finds them.
- whisper/meeting-note.wav: a few seconds of speech from espeak-ng, 16 kHz mono.

The Vision tab's pictures (vlm/) come from tabs.vlm.tiny.make_example_pictures; the text
examples (rag/, qlora/, prompts.json) are written by hand.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SPEECH = ("Please send the quarterly report to the whole team before noon on Friday. "
          "Thank you.")


def yolo_images(folder: Path, n: int = 3, size: int = 96) -> list[Path]:
    import numpy as np

    from tabs.yolo.synthetic import draw_sample

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2024)
    out = []
    for i in range(1, n + 1):
        img, _ = draw_sample(rng, size=size, max_objects=3)
        out.append(folder / f"shapes-{i}.png")
        img.save(out[-1], optimize=True)
    return out


def speech(path: Path, text: str = SPEECH) -> Path:
    from tabs.whisper.audio import load_audio, write_wav

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text],
                       check=True)
        write_wav(path, load_audio(raw))  # 16 kHz mono, what Whisper reads
    return path


if __name__ == "__main__":
    for p in [*yolo_images(HERE / "yolo"), speech(HERE / "whisper" / "meeting-note.wav")]:
        print(f"{p.relative_to(HERE)}  {p.stat().st_size // 1024} KB")
