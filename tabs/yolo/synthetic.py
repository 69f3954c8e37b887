"""Synthetic detection data: coloured shapes with known boxes on textured backgrounds.

No YOLO-format dataset ships offline, so tests, the benchmark and the tab's "demo dataset" button
draw their own: every box is known exactly, so a model that learned something scores a high mAP and
one that did not scores near zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square")


@dataclass(frozen=True)
class SynthBox:
    """One drawn shape: class index and pixel corners."""

    cls: int
    x1: float
    y1: float
    x2: float
    y2: float


def textured_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Colour blobs, stripes and pixel noise, so the shapes are not on a flat field."""
    coarse = rng.integers(40, 200, size=(4, 4, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 16)
    stripes = 18 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    img += stripes[..., None] + rng.normal(0, 10, size=(size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_sample(rng: np.random.Generator, size: int = 96, max_objects: int = 3,
                n_classes: int = 2) -> tuple[Image.Image, list[SynthBox]]:
    """One image with 1..max_objects non-overlapping shapes of random class, colour and size."""
    img = Image.fromarray(textured_background(rng, size))
    draw = ImageDraw.Draw(img)
    boxes: list[SynthBox] = []
    for _ in range(20):  # tries; overlapping placements are skipped
        if len(boxes) >= rng.integers(1, max_objects + 1):
            break
        side = float(rng.uniform(0.18, 0.38) * size)
        x1 = float(rng.uniform(0, size - side))
        y1 = float(rng.uniform(0, size - side))
        cand = SynthBox(int(rng.integers(0, n_classes)), x1, y1, x1 + side, y1 + side)
        if any(_overlap(cand, b) for b in boxes):
            continue
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        outline = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        shape = [cand.x1, cand.y1, cand.x2 - 1, cand.y2 - 1]
        if SHAPES[cand.cls % len(SHAPES)] == "circle":
            draw.ellipse(shape, fill=colour, outline=outline, width=2)
        else:
            draw.rectangle(shape, fill=colour, outline=outline, width=2)
        boxes.append(cand)
    return img, boxes


def _overlap(a: SynthBox, b: SynthBox, margin: float = 2.0) -> bool:
    return not (a.x2 + margin < b.x1 or b.x2 + margin < a.x1 or
                a.y2 + margin < b.y1 or b.y2 + margin < a.y1)


def yolo_lines(boxes: list[SynthBox], size: int) -> list[str]:
    """Boxes as YOLO label lines: ``cls cx cy w h``, normalised."""
    return [f"{b.cls} {(b.x1 + b.x2) / 2 / size:.6f} {(b.y1 + b.y2) / 2 / size:.6f} "
            f"{(b.x2 - b.x1) / size:.6f} {(b.y2 - b.y1) / size:.6f}" for b in boxes]


def write_yolo_dataset(root: Path, n_train: int = 48, n_val: int = 16, size: int = 96,
                       n_classes: int = 2, seed: int = 0) -> Path:
    """Write ``root/images/{train,val}``, ``root/labels/{train,val}`` and ``root/data.yaml``.

    Returns the data.yaml path, which ``yolo train data=...`` accepts as is.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, boxes = draw_sample(rng, size=size, n_classes=n_classes)
            stem = f"{split}_{i:04d}"
            img.save(root / "images" / split / f"{stem}.png")
            (root / "labels" / split / f"{stem}.txt").write_text(
                "\n".join(yolo_lines(boxes, size)) + "\n")
    names = "\n".join(f"  {i}: {SHAPES[i % len(SHAPES)]}" for i in range(n_classes))
    data = root / "data.yaml"
    data.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\n"
                    f"names:\n{names}\n")
    return data
