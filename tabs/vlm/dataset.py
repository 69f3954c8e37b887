"""Image-text pairs for adapting a VLM: a zip of pictures plus either a JSONL of conversations
in the ShareGPT / LLaMA-Factory shape (``messages`` or ``conversations`` whose user turns hold
``<image>`` markers, and an ``images`` list of paths inside the zip) or an ``image,caption``
CSV. Every line that cannot be used is reported with its number and the reason; the records
are read with the QLoRA trainer's readers (`tabs.qlora.dataset`), the pictures checked with
`tabs.vlm.images`, the zip unpacked with `studio.safety.safe_extract`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tabs.qlora.dataset import DatasetError, Problem, read_raw, record_shape, to_messages
from tabs.vlm.images import ImageRefused, load_image

IMAGE = "<image>"
CAPTION_PROMPT = "Describe this picture."
IGNORE = -100
DATA_SUFFIXES = (".jsonl", ".json", ".csv")


@dataclass
class Pair:
    """One usable example: turns (``<image>`` markers in the text) and its pictures."""

    messages: list[dict[str, str]]
    images: list[Path]
    line: int


@dataclass
class PairSet:
    """The usable pairs of an upload and every line that was not usable, with why."""

    path: str
    shape: str  # "conversations" | "captions"
    pairs: list[Pair] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.pairs) + len(self.problems)

    def report(self, limit: int = 30) -> str:
        kind = "conversations (JSONL)" if self.shape == "conversations" else \
            "image,caption (CSV)"
        lines = [f"**Shape:** {kind}", f"**Pairs:** {len(self.pairs)} usable of {self.total}"]
        lines += [f"- {n}" for n in self.notes[:10]]
        if self.problems:
            lines.append(f"**{len(self.problems)} line(s) not usable** (fix them, or tick "
                         "'Skip bad lines'):")
            lines += [f"- {p}" for p in self.problems[:limit]]
            if len(self.problems) > limit:
                lines.append(f"- ... and {len(self.problems) - limit} more")
        return "\n".join(lines)


def unpack(zip_path: str | Path, work_dir: str | Path) -> tuple[Path, list[str]]:
    """Extract the upload once per content (a folder named by its hash); (folder, problems)."""
    from studio.safety import file_digest, safe_extract

    zip_path = Path(zip_path)
    if zip_path.suffix.lower() != ".zip":
        raise DatasetError(f"{zip_path.name}: upload a .zip of pictures and one JSONL or CSV")
    dest = Path(work_dir) / file_digest(zip_path)[:16]
    done = dest / ".complete"
    if done.exists():
        return dest, []
    _, problems = safe_extract(zip_path, dest, skip_hidden=True)
    done.write_text("ok")
    return dest, problems


def _annotation(root: Path) -> Path:
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES
             and not p.name.startswith(".")]
    if not files:
        raise DatasetError("the zip holds no .jsonl, .json or .csv file describing the pairs")
    top = min(len(p.relative_to(root).parts) for p in files)
    files = [p for p in files if len(p.relative_to(root).parts) == top]
    if len(files) > 1:
        names = ", ".join(sorted(p.name for p in files))
        raise DatasetError(f"the zip holds several data files ({names}); keep one")
    return files[0]


def _picture(base: Path, root: Path, name: Any) -> Path:
    text = str(name or "").strip()
    pure = PurePosixPath(text.replace("\\", "/"))
    if not text or pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"picture path {text!r} must be relative to the zip, without '..'")
    for folder in (base, root):
        p = (folder / pure).resolve()
        if p.is_file() and p.is_relative_to(root.resolve()):
            try:
                load_image(p)
            except ImageRefused as e:
                raise ValueError(str(e)) from None
            return p
    raise ValueError(f"picture {text!r} is not in the zip")


def _caption_record(rec: dict) -> tuple[list[dict[str, str]], list[Any]]:
    keys = {k.strip().lower(): k for k in rec}
    image = rec.get(keys.get("image", keys.get("file", keys.get("path", ""))), "")
    caption = rec.get(keys.get("caption", keys.get("text", "")), "")
    if not str(image or "").strip():
        raise ValueError("missing 'image' column")
    if not str(caption or "").strip():
        raise ValueError("empty caption")
    return [{"role": "user", "content": IMAGE + CAPTION_PROMPT},
            {"role": "assistant", "content": str(caption).strip()}], [image]


def _conversation_record(rec: Any) -> tuple[list[dict[str, str]], list[Any]]:
    shape = record_shape(rec)
    if shape not in ("messages", "sharegpt"):
        raise ValueError("expected 'messages' (role/content) or 'conversations' (from/value) "
                         "and an 'images' list")
    turns = to_messages(rec, shape)
    images = rec.get("images", rec.get("image", []))
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list):
        raise ValueError("'images' must be a list of picture paths")
    markers = sum(t["content"].count(IMAGE) for t in turns)
    if any(IMAGE in t["content"] for t in turns if t["role"] != "user"):
        raise ValueError(f"{IMAGE} markers belong in user turns")
    if markers == 0 and len(images) == 1:  # one picture, no marker: it goes first
        first = next(t for t in turns if t["role"] == "user")
        first["content"] = IMAGE + first["content"]
    elif markers != len(images):
        raise ValueError(f"{markers} {IMAGE} marker(s) but {len(images)} picture(s)")
    if not images:
        raise ValueError("no picture: every pair needs at least one")
    return turns, images


def load_pairs(zip_path: str | Path, work_dir: str | Path) -> PairSet:
    """Read an upload; every unusable line is listed with its number and reason."""
    root, problems = unpack(zip_path, work_dir)
    ann = _annotation(root)
    shape = "captions" if ann.suffix.lower() == ".csv" else "conversations"
    ps = PairSet(path=str(zip_path), shape=shape, notes=problems)
    raw = read_raw(ann)
    if not raw:
        raise DatasetError(f"{ann.name} holds no records")
    for line, rec, err in raw:
        if err is not None:
            ps.problems.append(Problem(line, err))
            continue
        try:
            if shape == "captions":
                turns, names = _caption_record(rec)
            else:
                turns, names = _conversation_record(rec)
            pics = [_picture(ann.parent, root, n) for n in names]
            ps.pairs.append(Pair(turns, pics, line))
        except (ValueError, KeyError, TypeError) as e:
            ps.problems.append(Problem(line, str(e)))
    return ps


def require_clean(ps: PairSet, skip_bad: bool) -> list[str]:
    """Notes for the log; DatasetError listing the problems unless `skip_bad`."""
    if not ps.pairs:
        raise DatasetError("no usable pairs.\n" + ps.report())
    if ps.problems and not skip_bad:
        raise DatasetError("some lines are not usable; fix them or choose to skip them.\n"
                           + ps.report())
    if ps.problems:
        return [f"skipped {len(ps.problems)} line(s): "
                + ", ".join(str(p.line) for p in ps.problems[:50])]
    return []


def split(ps: PairSet, eval_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """A seeded train/eval split (at least one eval pair when asked and possible)."""
    import random

    order = list(range(len(ps.pairs)))
    random.Random(seed).shuffle(order)
    n_eval = round(len(order) * eval_fraction) if eval_fraction > 0 else 0
    if eval_fraction > 0 and len(order) >= 2:
        n_eval = min(max(1, n_eval), len(order) - 1)
    return [ps.pairs[i] for i in order[n_eval:]], [ps.pairs[i] for i in order[:n_eval]]


# ----- to model inputs ---------------------------------------------------------------------------
def engine_messages(turns: list[dict[str, str]], images: list[Any]) -> list[dict]:
    """Turns with ``<image>`` markers -> the VLM engine's messages (image parts in place)."""
    out, pics = [], iter(images)
    for t in turns:
        parts: list[dict] = []
        for i, chunk in enumerate(t["content"].split(IMAGE)):
            if i > 0:
                parts.append({"type": "image", "image": next(pics)})
            if chunk:
                parts.append({"type": "text", "text": chunk})
        out.append({"role": t["role"], "content": parts})
    return out


def encode(processor: Any, pair: Pair, max_len: int) -> dict[str, Any]:
    """Model inputs for one pair with labels on the last answer (+ end token) only; ValueError
    when it is longer than `max_len` (image tokens cannot be cut)."""
    from tabs.vlm.engine import split_images

    last = max(i for i, t in enumerate(pair.messages) if t["role"] == "assistant")
    msgs = engine_messages(pair.messages[:last + 1], [str(p) for p in pair.images])
    shaped, images, _ = split_images(msgs)
    n_prompt_images = sum(1 for m in shaped[:last] for p in m["content"] if p["type"] == "image")
    prompt = processor.apply_chat_template(shaped[:last], add_generation_prompt=True,
                                           tokenize=False)
    answer = pair.messages[last]["content"].strip()
    tok = processor.tokenizer
    eos = tok.eos_token or ""
    full = processor(text=[prompt + answer + eos], images=images or None, return_tensors="pt")
    head = processor(text=[prompt], images=images[:n_prompt_images] or None,
                     return_tensors="pt")["input_ids"].shape[1]
    n = full["input_ids"].shape[1]
    if n > max_len:
        raise ValueError(f"{n} tokens (pictures included), over the max length {max_len}")
    labels = full["input_ids"].clone()
    labels[:, :head] = IGNORE
    out = {k: v for k, v in full.items()}
    out["labels"] = labels
    return out


def token_length(processor: Any, pair: Pair) -> int:
    try:
        return encode(processor, pair, 10**9)["input_ids"].shape[1]
    except ValueError:
        return 0


def collate(features: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad the per-token tensors of a batch; join the picture tensors."""
    import torch

    longest = max(f["input_ids"].shape[1] for f in features)
    out: dict[str, Any] = {}
    for key in features[0]:
        vals = [f[key] for f in features]
        if vals[0].ndim == 2 and vals[0].shape[1] == features[0]["input_ids"].shape[1] and \
                key in ("input_ids", "attention_mask", "labels", "mm_token_type_ids",
                        "token_type_ids"):
            fill = {"input_ids": pad_id, "labels": IGNORE}.get(key, 0)
            out[key] = torch.cat([torch.nn.functional.pad(v, (0, longest - v.shape[1]),
                                                          value=fill) for v in vals])
        else:
            out[key] = torch.cat(vals)
    return out


def content_hash(ps: PairSet) -> str:
    h = hashlib.sha256()
    for p in ps.pairs:
        h.update(repr(p.messages).encode())
        for img in p.images:
            h.update(Path(img).read_bytes())
    return h.hexdigest()[:16]
