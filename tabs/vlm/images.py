"""Images from strangers, made safe for a vision model: every upload becomes one 8-bit RGB
picture of bounded size, or a `ImageRefused` whose message says why.

Converted (with a note): CMYK, palette, alpha (flattened on white), 16-bit and float greyscale
(rescaled to 8 bits), animated GIF/WebP/APNG (first frame), EXIF rotation, very large pictures
(scaled down; the model's processor resizes further anyway). Refused: files that are not
images, truncated files, and pictures whose header claims more pixels than `MAX_PIXELS`
(a decompression bomb is refused from its header, before a single pixel is decoded).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_PIXELS = 64_000_000  # header size above this: refused without decoding (8000 x 8000)
MAX_SIDE = 2048  # larger pictures are scaled down to this longest side
MAX_FILE_BYTES = 50 * 1024**2


class ImageRefused(ValueError):
    """An upload that cannot be used as an image; the message is for the user."""


@dataclass
class SafeImage:
    """A checked picture ready for a processor, and what was done to it."""

    image: Any  # PIL.Image.Image, mode RGB
    name: str
    notes: list[str] = field(default_factory=list)


def _open(src: Any, name: str):
    from PIL import Image, UnidentifiedImageError

    if isinstance(src, Image.Image):
        return src
    if isinstance(src, (bytes, bytearray)):
        if len(src) > MAX_FILE_BYTES:
            raise ImageRefused(f"{name}: the file is larger than {MAX_FILE_BYTES >> 20} MB")
        data = io.BytesIO(bytes(src))
    else:
        path = Path(src)
        if not path.is_file():
            raise ImageRefused(f"{name}: no such file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageRefused(f"{name}: the file is larger than {MAX_FILE_BYTES >> 20} MB")
        data = io.BytesIO(path.read_bytes())
    try:
        return Image.open(data)
    except Image.DecompressionBombError:
        raise ImageRefused(f"{name}: the header claims more pixels than can be opened "
                            "safely: a decompression bomb? Scale it down first.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageRefused(f"{name}: not an image, or a corrupt one ({e})") from None


def _to_rgb(im, notes: list[str]):
    """Any PIL mode -> 8-bit RGB."""
    import numpy as np
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        im = Image.fromarray(((arr - lo) * scale).round().astype(np.uint8), "L")
        notes.append(f"{'16-bit' if mode.startswith('I;16') else mode + '-mode'} picture "
                     "rescaled to 8 bits")
        return im.convert("RGB")
    if mode == "CMYK":
        notes.append("CMYK picture converted to RGB")
        return im.convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        notes.append("transparent areas flattened on white")
        return flat
    if mode != "RGB":
        return im.convert("RGB")
    return im


def load_image(src: Any, name: str | None = None, max_side: int = MAX_SIDE) -> SafeImage:
    """`src` (a path, bytes or a PIL image) as a checked 8-bit RGB picture, or ImageRefused."""
    from PIL import Image, ImageOps

    name = name or (Path(src).name if isinstance(src, (str, Path)) else "image")
    notes: list[str] = []
    im = _open(src, name)
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageRefused(f"{name}: the picture is empty")
    if w * h > MAX_PIXELS:
        raise ImageRefused(f"{name}: {w} x {h} pixels is more than this tab takes "
                           f"({MAX_PIXELS // 1_000_000} megapixels); it could be a "
                           "decompression bomb. Scale it down first.")
    frames = getattr(im, "n_frames", 1)
    try:
        if frames > 1:
            im.seek(0)
            notes.append(f"animated picture ({frames} frames): the first frame is used")
        im.load()
    except Image.DecompressionBombError:
        raise ImageRefused(f"{name}: the header claims more pixels than can be opened "
                            "safely: a decompression bomb? Scale it down first.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        text = str(e)
        why = "the file is truncated" if "truncat" in text.lower() else f"it is corrupt ({e})"
        raise ImageRefused(f"{name}: cannot read the picture: {why}") from None
    try:
        im = ImageOps.exif_transpose(im) or im
    except Exception:  # a broken EXIF block: keep the pixels as stored
        notes.append("unreadable EXIF orientation ignored")
    im = _to_rgb(im, notes)
    if max(im.size) > max_side:
        before = im.size
        im = im.copy()
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        notes.append(f"scaled down from {before[0]} x {before[1]} to {im.size[0]} x "
                     f"{im.size[1]}")
    return SafeImage(image=im, name=name, notes=notes)

