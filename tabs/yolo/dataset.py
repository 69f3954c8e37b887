"""The labelling store: images and YOLO txt labels under the studio home, saved on every edit.

One dataset is a folder ``<home>/yolo/datasets/<name>/`` with ``images/`` (the files as
uploaded), ``labels/<stem>.txt`` (YOLO format; a file that exists means "labelled", an empty one
means "labelled, no objects") and ``dataset.json`` (class names and the train/val split). Every
write is atomic (temp file + rename), so a reload or a crash never leaves half a label.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, UnidentifiedImageError

from studio.safety import DEFAULT_EXTRACT_BUDGET, read_yaml_file
from tabs.yolo.formats import (
    IMAGE_SUFFIXES,
    Box,
    CocoImage,
    LabelError,
    parse_coco,
    parse_names,
    parse_yolo,
    parse_yolo_rows,
    safe_extract,
    to_coco,
    to_yolo,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class ImportReport:
    """What an upload or import did, file by file."""

    added: list[str] = field(default_factory=list)
    labelled: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)

    def merge(self, other: ImportReport) -> None:
        self.added += other.added
        self.labelled += other.labelled
        self.problems += other.problems

    def summary(self) -> str:
        text = f"Added {len(self.added)} image(s), {len(self.labelled)} with labels."
        if self.problems:
            text += f" Skipped or fixed {len(self.problems)}:\n" + "\n".join(
                f"- {p}" for p in self.problems)
        return text


def _atomic_write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def check_image(path: Path) -> tuple[int, int]:
    """(width, height) of a readable image; raises ValueError naming why it is not one."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ValueError(f"{path.name}: not an image type we take ({kinds})")
    try:
        with Image.open(path) as im:
            im.verify()  # header and structure
        with Image.open(path) as im:
            im.load()  # the pixels too: a truncated file fails here
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ImportError) as e:
        # ImportError: Ultralytics patches Image.open to try a HEIF plugin on unknown files.
        raise ValueError(f"{path.name}: corrupt or not an image ({e})") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path.name}: refused, {e}") from None


class Dataset:
    """One labelling dataset on disk. Safe to use from several request threads for different
    images; each save replaces one small file atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.images_dir = self.root / "images"
        self.labels_dir = self.root / "labels"
        self.meta_path = self.root / "dataset.json"

    @property
    def name(self) -> str:
        return self.root.name

    # ----- meta: classes and split ----------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        if self.meta_path.exists():
            return json.loads(self.meta_path.read_text())
        return {"classes": [], "split": {}}

    def _save_meta(self, meta: dict[str, Any]) -> None:
        _atomic_write(self.meta_path, json.dumps(meta, indent=1))

    @property
    def classes(self) -> list[str]:
        return list(self._meta()["classes"])

    def set_classes(self, names: list[str]) -> list[str]:
        """Rename, reorder or append classes without changing what any box means.

        A name that is still in the list keeps its boxes wherever it moves (label files are
        rewritten with the new indices); a line whose old name is gone and whose new name is new
        is a rename in place. Dropping a class that a label still uses is refused, since its
        boxes would silently change meaning."""
        names = [n.strip() for n in names if n.strip()]
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique")
        old = self.classes
        remap = class_remap(old, names)
        used = self.used_classes()
        gone = sorted(c for c in used if c not in remap)
        if gone:
            c = gone[0]
            name = old[c] if c < len(old) else str(c)
            raise ValueError(f"class {c} ({name!r}) is still used by labels; relabel those "
                             "boxes before removing it")
        if any(remap.get(c, c) != c for c in used):
            self._remap_labels(remap)
        meta = self._meta()
        meta["classes"] = names
        self._save_meta(meta)
        return names

    def _remap_labels(self, remap: dict[int, int]) -> None:
        """Rewrite every label file with new class indices (each file atomically)."""
        for p in sorted(self.labels_dir.glob("*.txt")):
            lines = []
            for line in p.read_text().splitlines():
                parts = line.split()
                if parts:
                    parts[0] = str(remap[int(parts[0])])
                    lines.append(" ".join(parts))
            _atomic_write(p, "\n".join(lines) + ("\n" if lines else ""))

    def class_index(self, label: str, add: bool = True) -> int:
        """Index of a class by name; a new name is appended when `add`."""
        names = self.classes
        if label in names:
            return names.index(label)
        if not add:
            raise ValueError(f"unknown class {label!r}; classes are {names}")
        self.set_classes(names + [label])
        return len(names)

    def used_classes(self) -> set[int]:
        used = set()
        for p in self.labels_dir.glob("*.txt"):
            for line in p.read_text().splitlines():
                if line.strip():
                    used.add(int(line.split()[0]))
        return used

    # ----- images ---------------------------------------------------------------------------
    def images(self, only_unlabelled: bool = False) -> list[str]:
        if not self.images_dir.exists():
            return []
        names = sorted(p.name for p in self.images_dir.iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES)
        if only_unlabelled:
            names = [n for n in names if not self.is_labelled(n)]
        return names

    def image_path(self, name: str) -> Path:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"pick an image of dataset {self.name} (got {str(name)[:60]!r})")
        p = self.images_dir / Path(name).name
        if Path(name).name != name or not p.exists():
            raise KeyError(f"no image {name!r} in dataset {self.name}")
        return p

    def image_size(self, name: str) -> tuple[int, int]:
        with Image.open(self.image_path(name)) as im:
            return im.size

    def _label_path(self, name: str) -> Path:
        return self.labels_dir / (Path(name).stem + ".txt")

    def is_labelled(self, name: str) -> bool:
        return self._label_path(name).exists()

    def counts(self) -> tuple[int, int]:
        """(labelled, total) images."""
        names = self.images()
        return sum(self.is_labelled(n) for n in names), len(names)

    def add_image(self, src: Path, name: str | None = None) -> str:
        """Copy one checked image in; returns its name in the dataset (made unique)."""
        src = Path(src)
        check_image(src)
        name = _unique_name(self.images_dir, name or src.name)
        self.images_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, self.images_dir / name)
        return name

    def remove_image(self, name: str) -> None:
        self.image_path(name).unlink()
        self._label_path(name).unlink(missing_ok=True)

    # ----- labels ---------------------------------------------------------------------------
    def boxes(self, name: str) -> list[Box] | None:
        """The boxes of an image in pixels, or None when it has not been labelled yet."""
        lp = self._label_path(name)
        if not lp.exists():
            self.image_path(name)  # KeyError for an unknown image
            return None
        w, h = self.image_size(name)
        return parse_yolo(lp.read_text(), max(len(self.classes), 1), w, h)

    def set_boxes(self, name: str, boxes: list[Box]) -> int:
        """Save the boxes of one image at once (an empty list = labelled, no objects)."""
        w, h = self.image_size(name)
        n = len(self.classes)
        kept = []
        for i, b in enumerate(boxes, 1):
            corners = (b.x1, b.y1, b.x2, b.y2)
            if not all(math.isfinite(v) for v in corners):
                raise ValueError(f"box {i}: coordinates must be finite numbers, got {corners}")
            if not 0 <= b.cls < n:
                raise ValueError(f"box {i}: class {b.cls} out of range: the dataset has {n} "
                                 "classes")
            if b.x2 <= b.x1 or b.y2 <= b.y1:
                raise ValueError(f"box {i} has no area (need x1 < x2 and y1 < y2): {corners}")
            c = b.clipped(w, h)
            if c.x2 - c.x1 < 0.5 or c.y2 - c.y1 < 0.5:
                raise ValueError(f"box {i} {corners} lies outside the {w}x{h} image")
            kept.append(c)
        _atomic_write(self._label_path(name), to_yolo(kept, w, h))
        return len(kept)

    def clear_labels(self, name: str) -> None:
        """Mark an image unlabelled again."""
        self.image_path(name)
        self._label_path(name).unlink(missing_ok=True)

    # ----- split ----------------------------------------------------------------------------
    def split_of(self, name: str) -> str:
        """'train' or 'val'. Set by `split`; an image never split goes by a hash of its name, so
        adding images never reshuffles the ones already there."""
        stored = self._meta().get("split", {}).get(name)
        if stored:
            return stored
        frac = self._meta().get("val_fraction", 0.2)
        return "val" if _unit_hash(name, 0) < frac else "train"

    def split(self, val_fraction: float = 0.2, seed: int = 0) -> dict[str, int]:
        """Assign labelled images to train/val; at least one of each when there are two."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError("the validation fraction must be between 0 and 1")
        names = sorted(self.images(), key=lambda n: _unit_hash(n, seed))
        labelled = [n for n in names if self.is_labelled(n)]
        n_val = max(1, round(len(labelled) * val_fraction)) if len(labelled) >= 2 else 0
        val = set(labelled[:n_val])
        meta = self._meta()
        meta["val_fraction"] = val_fraction
        meta["split"] = {n: ("val" if n in val else "train") for n in names}
        self._save_meta(meta)
        return {"train": len(labelled) - n_val, "val": n_val}

    # ----- import ---------------------------------------------------------------------------
    def add_files(self, paths: list[Path], work_dir: Path,
                  budget: int = DEFAULT_EXTRACT_BUDGET) -> ImportReport:
        """Images and zips (of images, or of a YOLO/COCO dataset). Bad files are reported; a
        zip past the extract `budget` (or a zip bomb) is refused before it is unpacked."""
        report = ImportReport()
        for p in map(Path, paths):
            if p.suffix.lower() == ".zip":
                report.merge(self.import_archive(p, work_dir, budget))
            elif p.suffix.lower() in (".yaml", ".yml", ".json"):
                report.problems.append(f"{p.name}: upload the whole dataset as a zip (with its "
                                       "images), or use Import")
            else:
                try:
                    report.added.append(self.add_image(p))
                except ValueError as e:
                    report.problems.append(str(e))
        report.classes = self.classes
        return report

    def import_archive(self, zip_path: Path, work_dir: Path,
                       budget: int = DEFAULT_EXTRACT_BUDGET) -> ImportReport:
        """A zip of images, or of a YOLO (data.yaml) or COCO (*.json) dataset."""
        tmp = Path(tempfile.mkdtemp(dir=work_dir, prefix="unzip-"))
        try:
            files, problems = safe_extract(zip_path, tmp, budget)
            report = ImportReport(problems=[f"{zip_path.name}: {p}" for p in problems])
            yamls = sorted(f for f in files if f.name in ("data.yaml", "data.yml"))
            jsons = sorted(f for f in files if f.suffix == ".json")
            if yamls:
                report.merge(self.import_yolo(yamls[0]))
            elif jsons:
                report.merge(self.import_coco(jsons[0], jsons[0].parent))
            else:
                for f in files:
                    if f.name.startswith(".") or "__MACOSX" in f.parts:
                        continue
                    try:
                        report.added.append(self.add_image(f))
                    except ValueError as e:
                        report.problems.append(str(e))
            return report
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def import_yolo(self, data_yaml: Path) -> ImportReport:
        """A YOLO dataset: data.yaml with names and train/val image folders; labels beside them
        in ``labels/`` (the Ultralytics layout). Class names merge into this dataset's list."""
        data_yaml = Path(data_yaml)
        report = ImportReport()
        try:
            spec = read_yaml_file(data_yaml, label=data_yaml.name) or {}
            if not isinstance(spec, dict):
                raise LabelError("expected keys names, train and val")
            names = parse_names(spec.get("names"))
        except ValueError as e:  # LabelError, or the YAML limits (alias bombs, size)
            report.problems.append(str(e) if str(e).startswith(data_yaml.name)
                                   else f"{data_yaml.name}: {e}")
            return report
        remap = self._merge_classes(names)
        base = data_yaml.parent
        splits = {}
        for split in ("train", "val", "test"):
            for entry in _as_list(spec.get(split)):
                folder = (base / entry).resolve()
                if not folder.is_relative_to(base.resolve()):
                    report.problems.append(f"data.yaml {split}: {entry} is outside the dataset")
                    continue
                if folder.is_dir():
                    for img in sorted(folder.rglob("*")):
                        if img.is_file():
                            splits[img] = "val" if split != "train" else "train"
        placed = {}
        for img, split in splits.items():
            name = self._import_one(img, _yolo_label_for(img), len(names), remap, report)
            if name:
                placed[name] = split
        meta = self._meta()
        meta.setdefault("split", {}).update(placed)
        self._save_meta(meta)
        return report

    def import_coco(self, json_path: Path, images_root: Path) -> ImportReport:
        """A COCO detection JSON; image files are looked up by ``file_name`` under images_root
        (or beside the JSON, or in an ``images/`` folder there)."""
        report = ImportReport()
        try:
            names, coco_images, problems = parse_coco(json.loads(Path(json_path).read_text()))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            report.problems.append(f"{Path(json_path).name}: {e}")
            return report
        report.problems += problems
        remap = self._merge_classes(names)
        for ci in coco_images:
            src = _find_file(Path(images_root), ci.file_name)
            if src is None:
                report.problems.append(f"{ci.file_name}: listed in the JSON but not in the zip")
                continue
            try:
                w, h = check_image(src)
                name = self.add_image(src, Path(ci.file_name).name)
            except ValueError as e:
                report.problems.append(str(e))
                continue
            report.added.append(name)
            sx, sy = w / ci.width, h / ci.height  # the JSON may describe a resized copy
            boxes = [Box(remap[b.cls], b.x1 * sx, b.y1 * sy, b.x2 * sx, b.y2 * sy)
                     for b in ci.boxes]
            self.set_boxes(name, boxes)
            report.labelled.append(name)
        return report

    def _merge_classes(self, names: list[str]) -> dict[int, int]:
        """Map an imported dataset's class indices onto ours, appending new names."""
        mine = self.classes
        for n in names:
            if n not in mine:
                mine.append(n)
        self.set_classes(mine)
        return {i: mine.index(n) for i, n in enumerate(names)}

    def _import_one(self, img: Path, label: Path | None, n_classes: int, remap: dict[int, int],
                    report: ImportReport) -> str | None:
        try:
            w, h = check_image(img)
        except ValueError as e:
            report.problems.append(str(e))
            return None
        boxes = None
        if label is not None and label.exists():
            try:
                text = label.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError) as e:
                report.problems.append(f"{label.name}: not a text label file ({e}); image "
                                       "imported unlabelled")
            else:
                boxes, bad_rows = parse_yolo_rows(text, n_classes, w, h)
                if bad_rows and not boxes:  # nothing usable: leave it for the user to label
                    boxes = None
                    report.problems += [f"{label.name}: {p}; image imported unlabelled"
                                        for p in bad_rows]
                else:
                    report.problems += [f"{label.name}: {p}; row skipped, the good rows kept"
                                        for p in bad_rows]
        name = self.add_image(img)
        report.added.append(name)
        if boxes is not None:
            self.set_boxes(name, [Box(remap[b.cls], b.x1, b.y1, b.x2, b.y2) for b in boxes])
            report.labelled.append(name)
        return name

    # ----- export ---------------------------------------------------------------------------
    def labelled_items(self) -> list[tuple[str, str]]:
        """(image name, split) for every labelled image."""
        return [(n, self.split_of(n)) for n in self.images() if self.is_labelled(n)]

    def export_yolo(self, dest: Path) -> Path:
        """Write the labelled images in the Ultralytics layout with a data.yaml that
        ``yolo train data=<dest>/data.yaml`` accepts as is. Returns the data.yaml path."""
        items = self.labelled_items()
        if not self.classes:
            raise ValueError("the dataset has no classes yet")
        if not any(s == "train" for _, s in items) or not any(s == "val" for _, s in items):
            raise ValueError(f"need labelled images in both train and val (have "
                             f"{sum(s == 'train' for _, s in items)} train, "
                             f"{sum(s == 'val' for _, s in items)} val); label more or re-split")
        dest = Path(dest)
        for name, split in items:
            (dest / "images" / split).mkdir(parents=True, exist_ok=True)
            (dest / "labels" / split).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.image_path(name), dest / "images" / split / name)
            shutil.copyfile(self._label_path(name), dest / "labels" / split /
                            (Path(name).stem + ".txt"))
        # No 'path' key: Ultralytics then resolves train/val next to this file, wherever the
        # folder or zip is unpacked.
        spec = {"train": "images/train", "val": "images/val",
                "names": dict(enumerate(self.classes))}
        (dest / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        return dest / "data.yaml"

    def export_zip(self, dest_zip: Path) -> Path:
        """The YOLO layout as one zip (data.yaml at its root)."""
        with tempfile.TemporaryDirectory() as tmp:
            self.export_yolo(Path(tmp))
            dest_zip = Path(dest_zip)
            dest_zip.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(dest_zip, "w", zipfile.ZIP_DEFLATED) as zf:
                for f in sorted(Path(tmp).rglob("*")):
                    if f.is_file():
                        zf.write(f, f.relative_to(tmp).as_posix())
        return dest_zip

    def to_coco(self) -> dict[str, Any]:
        items = []
        for name, _ in self.labelled_items():
            w, h = self.image_size(name)
            items.append(CocoImage(name, w, h, self.boxes(name) or []))
        return to_coco(self.classes, items)

    def content_hash(self) -> str:
        """Hash of the labelled images, labels and class list: the run records it."""
        h = hashlib.sha256(json.dumps(self.classes).encode())
        for name, split in self.labelled_items():
            h.update(f"{name}:{split}".encode())
            h.update(self.image_path(name).read_bytes())
            h.update(self._label_path(name).read_bytes())
        return h.hexdigest()[:16]


class DatasetStore:
    """All labelling datasets under ``<home>/yolo/datasets``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "dataset.json").exists())

    def create(self, name: str, classes: list[str] | None = None) -> Dataset:
        if not _NAME.match(name or ""):
            raise ValueError("a dataset name is 1-64 letters, digits, '.', '_' or '-'")
        ds = Dataset(self.root / name)
        if ds.meta_path.exists():
            raise ValueError(f"dataset {name!r} already exists")
        ds.images_dir.mkdir(parents=True)
        ds.labels_dir.mkdir(parents=True)
        ds._save_meta({"classes": [], "split": {}})
        if classes:
            ds.set_classes(classes)
        return ds

    def get(self, name: str) -> Dataset:
        if not name or not _NAME.match(name) or not (self.root / name / "dataset.json").exists():
            raise KeyError(f"no dataset named {name!r}")
        return Dataset(self.root / name)


def class_remap(old: list[str], new: list[str]) -> dict[int, int]:
    """{old index: new index} for the classes that survive a class-list edit: by name when the
    name is still there (a move), else in place when the line at the same index is a new name
    (a rename). Old classes missing from the result were removed."""
    out = {}
    for i, name in enumerate(old):
        if name in new:
            out[i] = new.index(name)
        elif i < len(new) and new[i] not in old:
            out[i] = i
    return out


def _unit_hash(name: str, seed: int) -> float:
    return int(hashlib.sha1(f"{seed}:{name}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _unique_name(folder: Path, name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name) or "image"
    stem, suffix = Path(name).stem, Path(name).suffix.lower()
    candidate, i = f"{stem}{suffix}", 1
    taken = {p.stem for p in folder.iterdir()} if folder.exists() else set()
    while Path(candidate).stem in taken:  # labels are keyed by stem, so stems must be unique
        candidate, i = f"{stem}_{i}{suffix}", i + 1
    return candidate


def _as_list(v: Any) -> list[str]:
    if v is None:
        return []
    return [str(x) for x in v] if isinstance(v, list) else [str(v)]


def _yolo_label_for(img: Path) -> Path | None:
    """Ultralytics' rule: the label of .../images/x/a.jpg is .../labels/x/a.txt."""
    parts = list(img.parts)
    if "images" not in parts:
        return img.with_suffix(".txt")
    i = len(parts) - 1 - parts[::-1].index("images")
    parts[i] = "labels"
    return Path(*parts).with_suffix(".txt")


def _find_file(root: Path, file_name: str) -> Path | None:
    for cand in (root / file_name, root / "images" / file_name, root / Path(file_name).name,
                 root / "images" / Path(file_name).name):
        if cand.resolve().is_relative_to(root.resolve()) and cand.is_file():
            return cand
    hits = [p for p in root.rglob(Path(file_name).name) if p.is_file()]
    return hits[0] if hits else None
