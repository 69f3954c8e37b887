"""Dataset preparation: uploaded images (or a zip) + captions -> square training images.

Captions come from, in order: a ``.txt`` sidecar with the image's name, a CSV row
(``file_name``/``image`` + ``caption``/``text`` columns), or one instance prompt for all images
(DreamBooth style, e.g. "a photo of sks backpack"). Every image is EXIF-rotated, flattened to
RGB, resized so its short side is the training size and cropped: in the center, or ("smart")
where the picture has the most detail, so an off-center product is not cut in half. Files that
cannot be used are listed with a reason each and skipped; nothing else stops the preparation.

With aspect-ratio buckets (off by default) an image is not cropped to a square: it goes to the
bucket of about the training area (512x512, 576x448, 448x576, 640x384, 384x640 at 512) whose
shape is closest to its own, and only the small remainder is cropped. Training then draws each
batch from one bucket, as kohya's trainer does, so wide and tall subjects stay whole.

The prepared folder follows the Hugging Face imagefolder convention: PNGs plus
``metadata.jsonl`` with ``file_name`` and ``text`` (and each image's ``width``/``height``);
``dataset.json`` records the training size and whether buckets were used.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from studio.safety import DEFAULT_EXTRACT_BUDGET, safe_extract

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CAPTION_COLUMNS = ("caption", "text", "prompt")
FILE_COLUMNS = ("file_name", "filename", "file", "image", "path")
RECOMMENDED = (20, 150)
BUCKET_MAX_RATIO = 2.0  # wider or taller buckets leave too few pixels on the short side
CROPS = ("center", "smart")
UPSCALE_TOLERANCE = 1.05  # a few percent of enlargement is invisible


@dataclass
class DatasetItem:
    file_name: str  # in the prepared folder
    text: str
    source: str  # the name it was uploaded as
    width: int = 0  # of the prepared image (its bucket); 0 = not recorded (older folders)
    height: int = 0

    @property
    def bucket(self) -> tuple[int, int]:
        return (self.width, self.height)


@dataclass
class Skipped:
    name: str
    reason: str


@dataclass
class PreparedDataset:
    folder: Path
    items: list[DatasetItem]
    skipped: list[Skipped] = field(default_factory=list)
    size: int = 512
    notes: list[str] = field(default_factory=list)
    buckets: bool = False
    crop: str = "center"
    warnings: list[str] = field(default_factory=list)  # also in notes; the UI toasts them

    @property
    def hash(self) -> str:
        from studio.jobs import hash_files

        return hash_files(list(self.folder.glob("*.png")) + [self.folder / "metadata.jsonl"])

    def report(self) -> str:
        """Plain words: how many images are ready, and why each skipped file was skipped."""
        if self.buckets:
            counts = ", ".join(f"{w}x{h}: {len(ix)}" for (w, h), ix in
                               bucket_groups(self.items).items())
            lines = [f"{len(self.items)} images ready in aspect-ratio buckets around "
                     f"{self.size}x{self.size} ({counts})."]
        else:
            lines = [f"{len(self.items)} images ready at {self.size}x{self.size}."]
        lines += self.notes
        lines += [f"skipped {s.name}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


def expand_uploads(paths: list[Path], workdir: Path, budget: int = DEFAULT_EXTRACT_BUDGET,
                   problems: list[str] | None = None) -> list[Path]:
    """Files as given, with zip archives unpacked into `workdir` (nested folders flattened),
    each checked against the extract `budget` before anything is written (zip bombs are
    refused). What was skipped inside an archive is appended to `problems`."""
    out: list[Path] = []
    for i, p in enumerate(map(Path, paths)):
        if p.suffix.lower() == ".zip":
            files, notes = safe_extract(p, workdir / f"{i:03d}-{p.stem}"[:120], budget=budget,
                                        flatten=True, skip_hidden=True)
            out += files
            if problems is not None:
                problems += notes
        elif p.is_dir():
            out += sorted(x for x in p.rglob("*") if x.is_file())
        else:
            out.append(p)
    return out


def read_caption_csv(path: Path) -> dict[str, str]:
    """``{image file name: caption}`` from a CSV with a file column and a caption column."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    cols = {c.lower().strip(): c for c in rows[0]}
    fcol = next((cols[c] for c in FILE_COLUMNS if c in cols), None)
    ccol = next((cols[c] for c in CAPTION_COLUMNS if c in cols), None)
    if fcol is None or ccol is None:
        raise ValueError(f"{Path(path).name}: needs a file column ({', '.join(FILE_COLUMNS)}) "
                         f"and a caption column ({', '.join(CAPTION_COLUMNS)})")
    return {Path(r[fcol]).name: (r[ccol] or "").strip() for r in rows if r.get(fcol)}


def make_buckets(size: int) -> list[tuple[int, int]]:
    """(width, height) shapes of at most the area size x size, square first.

    Sides are multiples of 64 (8 below 256 px, for tiny test sizes), as the VAE needs multiples
    of 8 and SD's UNet is at home on multiples of 64; at most 2:1 either way; every landscape
    bucket has its portrait twin.
    """
    step = 64 if size >= 256 else 8
    widest: dict[int, int] = {}  # height -> the widest width that keeps the area
    for w in range(size, int(BUCKET_MAX_RATIO * size) + 1, step):
        h = (size * size // w) // step * step
        if h >= step and w / h <= BUCKET_MAX_RATIO:
            widest[h] = max(widest.get(h, 0), w)
    out = []
    for h, w in sorted(widest.items(), reverse=True):
        out += [(w, h)] if w == h else [(w, h), (h, w)]
    return out


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's (least cropped away)."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda wh: abs(math.log(wh[0] / wh[1]) - ratio))


def bucket_groups(items: list[DatasetItem]) -> dict[tuple[int, int], list[int]]:
    """Item indices per bucket, in dataset order; a batch is drawn from one of these."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.bucket, []).append(i)
    return groups


def smart_centering(im, size: tuple[int, int]) -> tuple[float, float]:
    """Where a crop to `size`'s shape keeps the most detail, as ImageOps.fit's centering.

    Detail is edge energy (PIL's FIND_EDGES) on a small grayscale copy, summed over each
    possible crop window along the axis that gets cut; a flat image stays centered.
    """
    import numpy as np
    from PIL import ImageFilter

    thumb = im.convert("L")
    thumb.thumbnail((128, 128))
    energy = np.asarray(thumb.filter(ImageFilter.FIND_EDGES), dtype=np.float64)
    energy[[0, -1], :] = 0  # the filter's border response is not detail
    energy[:, [0, -1]] = 0
    th, tw = energy.shape
    target = size[0] / size[1]
    horizontal = tw / th > target
    profile = energy.sum(axis=0 if horizontal else 1)
    window = max(1, round(th * target if horizontal else tw / target))
    if window >= len(profile):
        return (0.5, 0.5)
    sums = np.convolve(profile, np.ones(window), mode="valid")
    best = np.flatnonzero(sums >= sums.max() * 0.999)  # ties: the one nearest the center
    middle = (len(sums) - 1) / 2
    frac = float(best[np.argmin(np.abs(best - middle))] / (len(sums) - 1))
    return (frac, 0.5) if horizontal else (0.5, frac)


def load_square(path: Path, size: int, min_side: int, crop: str = "center"):
    """Open, rotate, flatten, resize (short side = size) and crop one image to a square.

    Raises ValueError with the reason a user sees when the file cannot be used.
    """
    return load_fitted(path, min_side, lambda w, h: (size, size), crop)


def load_fitted(path: Path, min_side: int, shape_for, crop: str = "center"):
    """Open, rotate, flatten one image; resize and crop it to ``shape_for(w, h)``.

    Raises ValueError with the reason a user sees when the file cannot be used.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"not a readable image ({type(e).__name__})") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"refused: {e}") from None
    if min(im.size) < min_side:
        raise ValueError(f"too small ({im.width}x{im.height}; the short side needs at least "
                         f"{min_side} px)")
    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    im = im.convert("RGB")
    shape = shape_for(im.width, im.height)
    centering = smart_centering(im, shape) if crop == "smart" else (0.5, 0.5)
    return ImageOps.fit(im, shape, method=Image.Resampling.LANCZOS, centering=centering)


def prepare_dataset(paths: list[Path], out_dir: Path, size: int = 512, instance_prompt: str = "",
                    min_side: int | None = None, buckets: bool = False,
                    crop: str = "center",
                    budget: int = DEFAULT_EXTRACT_BUDGET) -> PreparedDataset:
    """Turn uploaded files into a training folder; per-file reasons for what was skipped."""
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}")
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    min_side = min_side if min_side is not None else max(64, size // 2)
    ds = PreparedDataset(folder=out_dir, items=[], size=size, buckets=buckets, crop=crop)
    shapes = make_buckets(size) if buckets else [(size, size)]
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".unzip-") as tmp:
        problems: list[str] = []
        try:
            files = expand_uploads(paths, Path(tmp), budget, problems)
        except ValueError:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
        ds.skipped += [Skipped("archive", p) for p in problems]
        sidecars = {f.stem: f for f in files if f.suffix.lower() == ".txt"}
        csv_captions: dict[str, str] = {}
        for f in files:
            if f.suffix.lower() == ".csv":
                try:
                    csv_captions.update(read_caption_csv(f))
                except (ValueError, csv.Error, UnicodeDecodeError) as e:
                    ds.skipped.append(Skipped(f.name, f"caption CSV not used: {e}"))
        seen: set[str] = set()
        upscaled: list[str] = []
        for f in files:
            ext = f.suffix.lower()
            if ext in (".txt", ".csv"):
                continue
            if ext not in IMAGE_EXTS:
                ds.skipped.append(Skipped(f.name, "not an image file"))
                continue
            if f.name in seen:
                ds.skipped.append(Skipped(f.name, "duplicate file name"))
                continue
            caption = _caption_for(f, sidecars, csv_captions, instance_prompt)
            if not caption:
                ds.skipped.append(Skipped(f.name, "no caption: add NAME.txt, a CSV row, or an "
                                          "instance prompt"))
                continue
            scale: list[float] = []  # ImageOps.fit's resize factor, seen by shape_for
            try:
                im = load_fitted(f, min_side, partial(_fit_shape, shapes=shapes, scale=scale),
                                 crop)
            except ValueError as e:
                ds.skipped.append(Skipped(f.name, str(e)))
                continue
            if scale and scale[0] > UPSCALE_TOLERANCE:
                upscaled.append(f"{f.name} ({im.width}x{im.height} from a smaller original, "
                                f"x{scale[0]:.1f})")
            seen.add(f.name)
            name = f"{len(ds.items):04d}.png"
            im.save(out_dir / name)
            ds.items.append(DatasetItem(file_name=name, text=caption, source=f.name,
                                        width=im.width, height=im.height))
    if upscaled:
        ds.warnings.append(
            f"warning: {len(upscaled)} of {len(ds.items)} images are smaller than the training "
            f"size ({size} px) and were enlarged, so they look soft and the LoRA learns the "
            f"blur; use larger originals or a lower resolution: {', '.join(upscaled[:8])}"
            + (" …" if len(upscaled) > 8 else ""))
        ds.notes += ds.warnings
    lo, hi = RECOMMENDED
    if ds.items and not lo <= len(ds.items) <= hi:
        ds.notes.append(f"note: {lo}-{hi} images work best; you have {len(ds.items)}.")
    write_metadata(ds)
    (out_dir / "dataset.json").write_text(json.dumps({"size": size, "buckets": buckets,
                                                      "crop": crop}))
    return ds


def _fit_shape(w: int, h: int, shapes: list[tuple[int, int]],
               scale: list[float]) -> tuple[int, int]:
    """The bucket of a `w` x `h` image; records in `scale` how much the fit enlarges it."""
    shape = nearest_bucket(w, h, shapes)
    scale.append(max(shape[0] / w, shape[1] / h))
    return shape


def _caption_for(f: Path, sidecars: dict[str, Path], csv_captions: dict[str, str],
                 instance_prompt: str) -> str:
    side = sidecars.get(f.stem)
    if side is not None:
        text = side.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            return " ".join(text.split())
    if csv_captions.get(f.name):
        return csv_captions[f.name]
    return instance_prompt.strip()


def write_metadata(ds: PreparedDataset) -> None:
    with open(ds.folder / "metadata.jsonl", "w", encoding="utf-8") as f:
        for it in ds.items:
            f.write(json.dumps({"file_name": it.file_name, "text": it.text,
                                "source": it.source, "width": it.width,
                                "height": it.height}) + "\n")


def load_dataset(folder: Path) -> PreparedDataset:
    """Read a prepared folder back (the training job does this)."""
    folder = Path(folder)
    meta = folder / "metadata.jsonl"
    if not meta.exists():
        raise ValueError(f"{folder} is not a prepared dataset (no metadata.jsonl)")
    items = [DatasetItem(**json.loads(line)) for line in meta.read_text().splitlines()
             if line.strip()]
    items = [it for it in items if (folder / it.file_name).exists()]
    if not items:
        raise ValueError(f"{folder} holds no images")
    from PIL import Image

    for it in items:
        if not it.width:  # folders prepared before sizes were recorded
            with Image.open(folder / it.file_name) as im:
                it.width, it.height = im.size
    info_path = folder / "dataset.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    return PreparedDataset(folder=folder, items=items, size=int(info.get("size", items[0].width)),
                           buckets=bool(info.get("buckets", False)),
                           crop=str(info.get("crop", "center")))


def update_captions(folder: Path, captions: dict[str, str]) -> tuple[PreparedDataset, int]:
    """Apply captions edited in the preview grid (``{file_name: caption}``); returns the
    dataset and how many captions changed. A file name that is not in the dataset (a renamed
    cell) is refused with nothing written, so no caption is dropped without a word."""
    ds = load_dataset(folder)
    names = {it.file_name for it in ds.items}
    unknown = [str(n) for n in captions if n not in names]
    if unknown:
        raise ValueError(f"{', '.join(unknown[:5])}: not a file of this dataset (the file "
                         "column cannot be renamed); nothing was saved. Reload the captions.")
    changed = 0
    for it in ds.items:
        if it.file_name in captions:
            text = " ".join(str(captions[it.file_name] or "").split())
            if not text:
                raise ValueError(f"{it.source}: a caption cannot be empty")
            changed += text != it.text
            it.text = text
    write_metadata(ds)
    return ds, changed
