"""Label formats: the internal box, YOLO txt lines and COCO JSON, and safe archive extraction.

Internally a box is pixel corners plus a class index (what a user draws); YOLO stores normalised
centre/size per image; COCO stores pixel ``[x, y, w, h]`` with category ids. Every parser raises
`LabelError` naming the line or entry that is wrong, so an import can report it per file.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


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
    boxes = []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise LabelError(f"line {n}: expected 5 numbers 'class cx cy w h', got {len(parts)}")
        try:
            cls = int(parts[0])
            cx, cy, w, h = (float(p) for p in parts[1:])
        except ValueError:
            raise LabelError(f"line {n}: not numbers: {line.strip()!r}") from None
        if not 0 <= cls < n_classes:
            raise LabelError(f"line {n}: class {cls} out of range (the dataset has "
                             f"{n_classes} classes: 0..{n_classes - 1})")
        if not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)) or w <= 0 or h <= 0:
            raise LabelError(f"line {n}: coordinates must be normalised to 0..1 with w, h > 0: "
                             f"{line.strip()!r}")
        if cx - w / 2 < -1e-3 or cy - h / 2 < -1e-3 or cx + w / 2 > 1.001 or cy + h / 2 > 1.001:
            raise LabelError(f"line {n}: box reaches outside the image: {line.strip()!r}")
        boxes.append(Box(cls, (cx - w / 2) * width, (cy - h / 2) * height,
                         (cx + w / 2) * width, (cy + h / 2) * height).clipped(width, height))
    return boxes


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
    cats = sorted(data["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    names = [str(c["name"]) for c in cats]
    images = {}
    for im in data["images"]:
        images[im["id"]] = CocoImage(str(im["file_name"]), int(im["width"]), int(im["height"]),
                                     [])
    problems = []
    for ann in data.get("annotations", []):
        im = images.get(ann.get("image_id"))
        if im is None:
            problems.append(f"annotation {ann.get('id')}: image id {ann.get('image_id')} missing")
            continue
        if ann.get("category_id") not in index:
            problems.append(f"{im.file_name}: annotation {ann.get('id')}: category id "
                            f"{ann.get('category_id')} is not in 'categories'")
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0 or x < -1 or y < -1 or x + w > im.width + 1 or y + h > im.height + 1:
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
        keys = sorted(int(k) for k in names)
        if keys != list(range(len(keys))):
            raise LabelError(f"data.yaml names must be numbered 0..n-1, got {keys}")
        return [str(names[k] if k in names else names[str(k)]) for k in keys]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise LabelError("data.yaml has no 'names' list")


def safe_extract(zip_path: Path, dest: Path, max_bytes: int = 8 << 30) -> tuple[list[Path],
                                                                                   list[str]]:
    """Extract a zip into `dest`, skipping entries that would land outside it (zip-slip),
    links, and anything past `max_bytes` in total. Returns (extracted files, problems)."""
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    files, problems = [], []
    total = 0
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        return [], [f"{Path(zip_path).name}: not a valid zip file"]
    with zf:
        for info in zf.infolist():
            name = info.filename
            if info.is_dir():
                continue
            pure = PurePosixPath(name.replace("\\", "/"))
            target = (dest / pure).resolve()
            if pure.is_absolute() or ".." in pure.parts or not target.is_relative_to(dest):
                problems.append(f"{name}: skipped, the path escapes the upload folder")
                continue
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                problems.append(f"{name}: skipped, symbolic links are not extracted")
                continue
            total += info.file_size
            if total > max_bytes:
                problems.append(f"{name}: skipped, the archive is larger than allowed")
                break
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)
            files.append(target)
    return files, problems
