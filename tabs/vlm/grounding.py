"""Grounding: boxes a VLM writes in its answer, parsed into picture pixels, drawn, and sent to
the YOLO labeler as pre-labels.

Formats understood (one answer may mix them):
- Qwen2.5-VL's JSON, ``[{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}]`` (often in a ```json
  fence), in pixels of the picture *as the model saw it* (after its processor's resize), so
  they are scaled by original size / model input size;
- Qwen2-VL's ``label(x1,y1),(x2,y2)`` (its box tokens are special tokens, dropped when the
  answer is decoded), on a 0..1000 grid;
- a plain ``[x1, y1, x2, y2]`` list of fractions in 0..1 (LLaVA's habit).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MAX_BOXES = 200
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_QWEN2 = re.compile(r"([^\n()\[\]{}]{0,60}?)\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*,\s*\(\s*(\d+)\s*,"
                    r"\s*(\d+)\s*\)")
_FRACTION = re.compile(r"([A-Za-z][\w -]{0,40}?)?\s*[:=]?\s*\[\s*(0?\.\d+|[01](?:\.0+)?)\s*,\s*"
                       r"(0?\.\d+|[01](?:\.0+)?)\s*,\s*(0?\.\d+|[01](?:\.0+)?)\s*,\s*"
                       r"(0?\.\d+|[01](?:\.0+)?)\s*\]")


@dataclass(frozen=True)
class GroundedBox:
    """One box in the original picture's pixels (x1 < x2, y1 < y2) and what it is."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _clip(label: str, x1: float, y1: float, x2: float, y2: float, w: int, h: int
          ) -> GroundedBox | None:
    x1, x2 = sorted((max(0.0, min(float(x1), w)), max(0.0, min(float(x2), w))))
    y1, y2 = sorted((max(0.0, min(float(y1), h)), max(0.0, min(float(y2), h))))
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    label = " ".join(str(label).split())[:60] or "object"
    return GroundedBox(label, x1, y1, x2, y2)


def _json_items(text: str) -> list[Any]:
    """Every JSON value in fences, else the first [...] or {...} span that parses."""
    chunks = _FENCE.findall(text) or [text]
    items: list[Any] = []
    for chunk in chunks:
        for opener, closer in (("[", "]"), ("{", "}")):
            start, end = chunk.find(opener), chunk.rfind(closer)
            if 0 <= start < end:
                try:
                    value = json.loads(chunk[start:end + 1])
                except ValueError:
                    continue
                items += value if isinstance(value, list) else [value]
                break
    return items


def parse_boxes(text: str, image_size: tuple[int, int],
                model_size: tuple[int, int] | None = None) -> list[GroundedBox]:
    """Boxes in `text`, in pixels of a picture of `image_size` (w, h). `model_size`: the size
    the model saw (Qwen2.5-VL's absolute coordinates are in it); None means the same."""
    w, h = image_size
    mw, mh = model_size or image_size
    sx, sy = w / max(mw, 1), h / max(mh, 1)
    out: list[GroundedBox] = []
    for item in _json_items(text):
        if not isinstance(item, dict):
            continue
        bbox = item.get("bbox_2d", item.get("bbox"))
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) for v in bbox)):
            continue
        label = item.get("label", item.get("name", "object"))
        if all(0 <= v <= 1 for v in bbox) and any(isinstance(v, float) for v in bbox):
            box = _clip(label, bbox[0] * w, bbox[1] * h, bbox[2] * w, bbox[3] * h, w, h)
        else:
            box = _clip(label, bbox[0] * sx, bbox[1] * sy, bbox[2] * sx, bbox[3] * sy, w, h)
        if box:
            out.append(box)
    if not out:
        for m in _QWEN2.finditer(text):
            x1, y1, x2, y2 = (int(v) for v in m.groups()[1:])
            box = _clip(m.group(1).strip(" :,-") or "object", x1 * w / 1000, y1 * h / 1000,
                        x2 * w / 1000, y2 * h / 1000, w, h)
            if box:
                out.append(box)
    if not out:
        for m in _FRACTION.finditer(text):
            x1, y1, x2, y2 = (float(v) for v in m.groups()[1:])
            box = _clip((m.group(1) or "object").strip(), x1 * w, y1 * h, x2 * w, y2 * h, w, h)
            if box:
                out.append(box)
    return out[:MAX_BOXES]


def boxes_from_json(data: Any, image_size: tuple[int, int]) -> list[GroundedBox]:
    """Boxes sent back by a client (the tab's JSON view, a script): checked and clipped."""
    if isinstance(data, str):
        try:
            data = json.loads(data or "[]")
        except ValueError as e:
            raise ValueError(f"the boxes are not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise ValueError("the boxes must be a JSON list of {label, x1, y1, x2, y2}")
    if len(data) > MAX_BOXES:
        raise ValueError(f"at most {MAX_BOXES} boxes per picture")
    out = []
    for n, item in enumerate(data, 1):
        try:
            vals = [float(item[k]) for k in ("x1", "y1", "x2", "y2")]
            label = str(item.get("label") or "object")
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"box {n}: needs label and numbers x1, y1, x2, y2") from None
        box = _clip(label, *vals, *image_size)
        if box is None:
            raise ValueError(f"box {n} has no area inside the picture")
        out.append(box)
    return out


_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
            "#bfef45", "#fabed4", "#469990"]


def draw_boxes(image: Any, boxes: list[GroundedBox]) -> Any:
    """A copy of the PIL picture with each box and its label drawn, one colour per label."""
    from PIL import ImageDraw

    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    labels = sorted({b.label for b in boxes})
    width = max(2, round(max(out.size) / 250))
    for b in boxes:
        colour = _COLOURS[labels.index(b.label) % len(_COLOURS)]
        draw.rectangle([b.x1, b.y1, b.x2, b.y2], outline=colour, width=width)
        tx, ty = b.x1 + width, max(0.0, b.y1 - 12) if b.y1 >= 12 else b.y1 + width
        text_box = draw.textbbox((tx, ty), b.label)
        draw.rectangle(text_box, fill=colour)
        draw.text((tx, ty), b.label, fill="white")
    return out


def send_to_yolo(yolo: Any, dataset: str, picture: Path, boxes: list[GroundedBox]) -> str:
    """Add `picture` to the YOLO labeler's `dataset` (made if new) with `boxes` as its labels
    (new class names appended); returns what was done. The picture must be the one the boxes
    were parsed against (the checked RGB copy the model saw)."""
    from tabs.yolo.formats import Box

    if not boxes:
        raise ValueError("no boxes to send: ask the model where things are first (e.g. "
                         "'Locate every cat and output bbox_2d coordinates in JSON')")
    name = (dataset or "").strip()
    try:
        ds = yolo.store.get(name)
    except KeyError:
        try:
            ds = yolo.store.create(name)  # validates the name
        except ValueError:
            if name not in yolo.store.names():
                raise
            ds = yolo.store.get(name)  # another request made it just now
    image_name = ds.add_image(picture)
    yolo_boxes = [Box(ds.class_index(b.label), b.x1, b.y1, b.x2, b.y2) for b in boxes]
    ds.set_boxes(image_name, yolo_boxes)
    labelled, total = ds.counts()
    return (f"Added {image_name} to YOLO dataset '{ds.name}' with {len(yolo_boxes)} pre-label"
            f"{'s' if len(yolo_boxes) != 1 else ''} ({', '.join(sorted({b.label for b in boxes}))}"
            f"); {labelled} of {total} images labelled. Review them in the YOLO tab.")
