"""Label formats: the internal box, YOLO txt lines and COCO JSON, and safe archive extraction.

Internally a box is pixel corners plus a class index (what a user draws); YOLO stores normalised
centre/size per image; COCO stores pixel ``[x, y, w, h]`` with category ids. Every parser raises
`LabelError` naming the line or entry that is wrong, so an import can report it per file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.safety import DEFAULT_EXTRACT_BUDGET
from studio.safety import safe_extract as _safe_extract

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


MAX_CLASSES = 1000
MAX_CLASS_CHARS = 100


class LabelError(ValueError):
    """A label file or entry that cannot be used as is."""


@dataclass(frozen=True)
class Box:
    """One object: class index and pixel corners (x1 < x2, y1 < y2) in the image."""

    cls: int
    x1: float
    y1: float
    x2: float
    y2: float

    def clipped(self, width: int, height: int) -> Box:
        return Box(self.cls, max(0.0, min(self.x1, width)), max(0.0, min(self.y1, height)),
                   max(0.0, min(self.x2, width)), max(0.0, min(self.y2, height)))

    def as_dict(self, names: list[str] | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"cls": self.cls, "xmin": round(self.x1, 2),
                             "ymin": round(self.y1, 2), "xmax": round(self.x2, 2),
                             "ymax": round(self.y2, 2)}  # labels store 6 decimals of 0..1
        if names is not None and 0 <= self.cls < len(names):
            d["label"] = names[self.cls]
        return d


def parse_yolo(text: str, n_classes: int, width: int, height: int) -> list[Box]:
    """YOLO lines ``cls cx cy w h`` (normalised) to pixel boxes. Raises LabelError with line no."""
    boxes, problems = parse_yolo_rows(text, n_classes, width, height)
    if problems:
        raise LabelError(problems[0])
    return boxes


def parse_yolo_rows(text: str, n_classes: int, width: int, height: int
                    ) -> tuple[list[Box], list[str]]:
    """Like `parse_yolo`, but every good row is kept and every bad row reported:
    (boxes, ["line N: why", ...])."""
    boxes, problems = [], []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            box = _yolo_row(n, line, n_classes, width, height)
        except LabelError as e:
            problems.append(str(e))
            continue
        if box is not None:
            boxes.append(box)
    return boxes, problems


def _yolo_row(n: int, line: str, n_classes: int, width: int, height: int) -> Box | None:
    parts = line.split()
    if not parts:
        return None
    shown = line.strip()[:80]
    if len(parts) != 5:
        raise LabelError(f"line {n}: expected 5 numbers 'class cx cy w h', got {len(parts)}")
    try:
        cls = int(parts[0])
        cx, cy, w, h = (float(p) for p in parts[1:])
    except ValueError:
        raise LabelError(f"line {n}: not numbers: {shown!r}") from None
    if not 0 <= cls < n_classes:
        raise LabelError(f"line {n}: class {cls} out of range (the dataset has "
                         f"{n_classes} classes: 0..{n_classes - 1})")
    if not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)) or w <= 0 or h <= 0:  # NaN fails too
        raise LabelError(f"line {n}: coordinates must be normalised to 0..1 with w, h > 0: "
                         f"{shown!r}")
    if cx - w / 2 < -1e-3 or cy - h / 2 < -1e-3 or cx + w / 2 > 1.001 or cy + h / 2 > 1.001:
        raise LabelError(f"line {n}: box reaches outside the image: {shown!r}")
    return Box(cls, (cx - w / 2) * width, (cy - h / 2) * height,
               (cx + w / 2) * width, (cy + h / 2) * height).clipped(width, height)


def to_yolo(boxes: list[Box], width: int, height: int) -> str:
    """Pixel boxes to YOLO lines (clipped to the image, degenerate boxes dropped)."""
    lines = []
    for b in boxes:
        b = b.clipped(width, height)
        w, h = b.x2 - b.x1, b.y2 - b.y1
        if w <= 0 or h <= 0:
            continue
        lines.append(f"{b.cls} {(b.x1 + w / 2) / width:.6f} {(b.y1 + h / 2) / height:.6f} "
                     f"{w / width:.6f} {h / height:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


@dataclass
class CocoImage:
    file_name: str
    width: int
    height: int
    boxes: list[Box]


def parse_coco(data: dict[str, Any]) -> tuple[list[str], list[CocoImage], list[str]]:
    """COCO detection JSON to (class names, images with boxes, problems per entry).

    Category ids may be any integers; they are mapped to 0..n-1 in id order. Annotations that
    point at a missing image or category, or have a non-positive size, are reported and skipped.
    """
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise LabelError("not a COCO detection file: needs 'images', 'annotations', 'categories'")
    try:
        cats = sorted(data["categories"], key=lambda c: int(c["id"]))
        index = {c["id"]: i for i, c in enumerate(cats)}
        names = parse_names([c["name"] for c in cats])
    except (TypeError, ValueError, KeyError) as e:
        raise LabelError(f"COCO categories need an integer id and a name each ({e})") from None
    images = {}
    problems = []
    for n, im in enumerate(data["images"] if isinstance(data["images"], list) else []):
        try:
            ci = CocoImage(str(im["file_name"]), int(im["width"]), int(im["height"]), [])
            if ci.width <= 0 or ci.height <= 0:
                raise ValueError(f"size {ci.width}x{ci.height}")
        except (TypeError, ValueError, KeyError) as e:
            problems.append(f"COCO image entry {n}: needs file_name and a positive width and "
                            f"height ({e}); skipped")
            continue
        images[im["id"]] = ci
    for ann in data.get("annotations", []):
        im = images.get(ann.get("image_id"))
        if im is None:
            problems.append(f"annotation {ann.get('id')}: image id {ann.get('image_id')} missing")
            continue
        if ann.get("category_id") not in index:
            problems.append(f"{im.file_name}: annotation {ann.get('id')}: category id "
                            f"{ann.get('category_id')} is not in 'categories'")
            continue
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (TypeError, ValueError, KeyError):
            problems.append(f"{im.file_name}: annotation {ann.get('id')}: bbox must be 4 "
                            "numbers [x, y, width, height]")
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0 or x < -1 \
                or y < -1 or x + w > im.width + 1 or y + h > im.height + 1:
            problems.append(f"{im.file_name}: annotation {ann.get('id')}: bbox {ann['bbox']} is "
                            f"outside the {im.width}x{im.height} image")
            continue
        im.boxes.append(Box(index[ann["category_id"]], x, y, x + w, y + h).clipped(im.width,
                                                                                    im.height))
    return names, list(images.values()), problems


def to_coco(names: list[str], images: list[CocoImage]) -> dict[str, Any]:
    """Images with pixel boxes to a COCO detection dict (category ids 1..n, as COCO does)."""
    out: dict[str, Any] = {
        "images": [], "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
    }
    ann_id = 1
    for img_id, im in enumerate(images, 1):
        out["images"].append({"id": img_id, "file_name": im.file_name, "width": im.width,
                              "height": im.height})
        for b in im.boxes:
            w, h = b.x2 - b.x1, b.y2 - b.y1
            out["annotations"].append({"id": ann_id, "image_id": img_id, "category_id": b.cls + 1,
                                       "bbox": [b.x1, b.y1, w, h], "area": w * h, "iscrowd": 0})
            ann_id += 1
    return out


def parse_names(names: Any) -> list[str]:
    """data.yaml ``names`` as a list or an ``{index: name}`` mapping, to a list."""
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise LabelError("data.yaml names must be numbered 0..n-1") from None
        if keys != list(range(len(keys))):
            raise LabelError(f"data.yaml names must be numbered 0..n-1, got {keys[:20]}")
        out = [names[k] if k in names else names[str(k)] for k in keys]
    elif isinstance(names, list):
        out = names
    else:
        raise LabelError("data.yaml has no 'names' list")
    if len(out) > MAX_CLASSES:
        raise LabelError(f"data.yaml has {len(out)} class names; at most {MAX_CLASSES}")
    bad = [i for i, n in enumerate(out) if not isinstance(n, (str, int, float))
           or len(str(n)) > MAX_CLASS_CHARS]
    if bad:
        raise LabelError(f"data.yaml class {bad[0]}: a class name is a short text (at most "
                         f"{MAX_CLASS_CHARS} characters)")
    return [str(n) for n in out]


def safe_extract(zip_path: Path, dest: Path, max_bytes: int = DEFAULT_EXTRACT_BUDGET
                 ) -> tuple[list[Path], list[str]]:
    """Extract a zip into `dest` (studio.safety.safe_extract: zip-slip and links skipped, bombs
    refused by declared and actual size). A refused archive is one problem, nothing kept."""
    try:
        return _safe_extract(zip_path, dest, budget=max_bytes)
    except ValueError as e:
        return [], [str(e)]
