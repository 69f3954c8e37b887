"""What the Vision tab's buttons do, without Gradio: which VLM a request uses, the streamed
reply as chatbot messages, grounding boxes drawn and sent to the YOLO labeler, and the
per-session Stop (``studio.stops``)."""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.config import format_bytes
from studio.llm import GenerationSettings, TurnStats
from tabs.vlm.engine import VLMEngine, VLMSource
from tabs.vlm.grounding import (
    GroundedBox,
    boxes_from_json,
    draw_boxes,
    parse_boxes,
    send_to_yolo,
)
from tabs.vlm.images import ImageRefused, load_image

KIND = "vlm"
STOP = "vlm"  # this tab's name in studio.stops
# int4: the chat engine's route for the language model (bench/results/vlm_int4.json: 316 tok/s
# vs NF4 207 on the H200); "auto" stays NF4 until the picture side's quality under int4 is measured
QUANTIZATIONS = ["auto", "nf4", "int4", "bf16", "fp16", "fp32"]
MAX_PICTURES = 4  # per conversation: each costs hundreds to thousands of prompt tokens
# (label, hub id): what a 12 GB card runs in 4-bit; any local folder or other hub id works too
CATALOGUE = [
    ("LLaVA-1.5-7B", "llava-hf/llava-1.5-7b-hf"),
    ("LLaVA-NeXT-7B (Vicuna)", "llava-hf/llava-v1.6-vicuna-7b-hf"),
    ("Qwen2.5-VL-7B-Instruct (grounding, documents)", "Qwen/Qwen2.5-VL-7B-Instruct"),
    ("Qwen2.5-VL-3B-Instruct (small cards)", "Qwen/Qwen2.5-VL-3B-Instruct"),
    ("SmolVLM2-2.2B-Instruct (small cards, CPU)", "HuggingFaceTB/SmolVLM2-2.2B-Instruct"),
]
GROUNDING_HINT = "Locate every {thing} and output bbox_2d coordinates in JSON."


@dataclass
class VLMChatConfig:
    """Everything the tab's chat widgets choose, as one typed object."""

    model: str = ""  # hub id or local folder
    quantization: str = "auto"
    max_pixels: int = 0  # 0: from the VRAM budget (dynamic-resolution models only)
    system_prompt: str = ""
    settings: GenerationSettings = field(default_factory=GenerationSettings)


def default_model(studio: Any) -> str:
    choice = studio.choices.get("vlm")
    return choice.source if choice is not None and choice.source else ""


def pixel_cap(budget: int) -> int:
    """Picture resolution for dynamic-resolution models from the VRAM budget: 1024 x 1024 (about
    1,300 image tokens on Qwen2.5-VL) on a 12 GB card, less on smaller ones."""
    gib = budget / 1024**3
    side = 1024 if gib >= 11 else 768 if gib >= 7 else 512
    return side * side


def source_for(studio: Any, cfg: VLMChatConfig, on_disk: bool = True) -> VLMSource:
    """What to load for `cfg`. A hub id is loaded from its folder in the hub cache; one that
    is not on disk raises `studio.hub.NotOnDisk` (download it on the Models tab): a request
    never starts a silent multi-GB download. `on_disk=False` keeps the hub id (for estimates
    that need only the catalogue's shapes)."""
    from studio.hub import require_local

    model = (cfg.model or default_model(studio)).strip()
    if not model:
        raise ValueError("Choose a vision-language model: a hub id such as "
                         "Qwen/Qwen2.5-VL-7B-Instruct, or a local model folder.")
    if cfg.quantization not in QUANTIZATIONS:
        raise ValueError(f"load as one of {', '.join(QUANTIZATIONS)}")
    if cfg.max_pixels and not 28 * 28 * 4 <= cfg.max_pixels <= 4096 * 4096:
        raise ValueError("the picture cap must be between 3,136 and 16,777,216 pixels")
    cap = cfg.max_pixels or pixel_cap(studio.models.budget)
    title = Path(model).name or model
    where = require_local(studio, model, f"The vision model {title}") if on_disk else model
    return VLMSource(where, cfg.quantization, title=title, max_pixels=cap)


def engine_for(studio: Any, cfg: VLMChatConfig, adapter: str | None = None) -> VLMEngine:
    """An engine for this request (cheap); the weights are the model manager's one copy."""
    return VLMEngine(studio, source_for(studio, cfg), adapter=adapter)


def preload(studio: Any, cfg: VLMChatConfig) -> str:
    engine = engine_for(studio, cfg)
    with studio.models.use(engine.key) as llm:
        size = studio.models.stats(engine.key).get("size", 0)
        path = "CUDA-graph decode" if llm.decoder is not None and llm.decoder.use_cuda_graphs \
            else "static-cache decode" if llm.decoder is not None else "generate()"
        return (f"Loaded **{engine.name}** ({llm.model_type}, {llm.quantization}, "
                f"{format_bytes(size)} measured, {llm.max_context}-token context, {path}).")


def chat_fit(studio: Any, cfg: VLMChatConfig, pictures: int = 2) -> str:
    """"Will it fit?" for chatting: weights, vision tower, image tokens at the picture cap and
    the KV cache, against the budget."""
    from studio.hub import NotOnDisk
    from tabs.vlm.engine import DEFAULT_CONTEXT
    from tabs.vlm.estimate import KNOWN, chat_estimate, load_vlm_arch

    try:
        src = source_for(studio, cfg)
    except NotOnDisk:  # the catalogue knows the shapes of its models without their files
        src = source_for(studio, cfg, on_disk=False)
        if src.source not in KNOWN:
            raise
    arch = load_vlm_arch(src.source)
    cuda = getattr(studio.probe, "device", "cpu") == "cuda"
    context = min(DEFAULT_CONTEXT, 4096 if arch.model_type.startswith("llava") else
                  DEFAULT_CONTEXT)
    est = chat_estimate(arch, context=context, max_pixels=src.max_pixels, pictures=pictures,
                        four_bit=cuda and src.quantization in ("auto", "nf4"),
                        budget=studio.models.budget)
    return est.describe()


# ----- conversation <-> chatbot ----------------------------------------------------------------
def allowed_roots(studio: Any) -> list[Path]:
    """Where a picture named in a chatbot history may live: Gradio's upload cache, the studio
    home and the bundled examples. A path from anywhere else is ignored (a hostile client could
    otherwise name any file on the server)."""
    gradio_tmp = os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")
    return [Path(gradio_tmp).resolve(), Path(studio.settings.home).resolve(), ASSETS.resolve()]


ASSETS = Path(__file__).resolve().parents[2] / "assets" / "vlm"


def _allowed(path: str, roots: list[Path]) -> Path | None:
    try:
        p = Path(path).resolve()
    except (OSError, ValueError):
        return None
    return p if p.is_file() and any(p.is_relative_to(r) for r in roots) else None


def _parts(content: Any) -> list[tuple[str, str]]:
    """Chatbot content in any of Gradio's shapes -> [("text"|"file", value)]."""
    items = content if isinstance(content, list) else [content]
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(("text", item))
        elif isinstance(item, dict):
            if item.get("type") == "text":
                out.append(("text", str(item.get("text", ""))))
            elif item.get("type") == "file" and isinstance(item.get("file"), dict):
                out.append(("file", str(item["file"].get("path", ""))))
            elif "path" in item:
                out.append(("file", str(item["path"])))
    return out


def history_to_messages(system_prompt: str, history: list[dict], roots: list[Path]
                        ) -> list[dict]:
    """Chatbot messages -> the conversation the model sees (pictures as image parts)."""
    out = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    for m in history:
        if (m.get("metadata") or {}).get("title") or m.get("role") not in ("user", "assistant"):
            continue  # notices are for the reader
        parts = []
        for kind, value in _parts(m.get("content")):
            if kind == "text" and value:
                parts.append({"type": "text", "text": value})
            elif kind == "file" and m["role"] == "user":
                p = _allowed(value, roots)
                if p is not None:
                    parts.append({"type": "image", "image": str(p), "name": p.name})
        if not parts:
            continue
        if out and out[-1]["role"] == m["role"]:  # Gradio shows a picture as its own bubble
            out[-1]["content"] += parts
        else:
            out.append({"role": m["role"], "content": parts})
    for m in out:
        if isinstance(m["content"], list) and all(p["type"] == "text" for p in m["content"]):
            m["content"] = "".join(p["text"] for p in m["content"])
    return out


def count_pictures(messages: list[dict]) -> int:
    return sum(1 for m in messages if isinstance(m["content"], list)
               for p in m["content"] if p["type"] == "image")


def stats_line(studio: Any, engine: VLMEngine, stats: TurnStats | None) -> str:
    """Tokens/s, time to first token and VRAM, as the tab shows under the chat."""
    from tabs.chat.service import stats_line as chat_stats_line

    return chat_stats_line(studio, engine, stats)


def stream_reply(studio: Any, cfg: VLMChatConfig, history: list[dict], message: str,
                 pictures: list[str], stop_event: threading.Event | None = None,
                 adapter: str | None = None) -> Iterator[tuple[list[dict], str]]:
    """Yield (chatbot messages, stats line) as the reply streams in. `pictures` are this
    turn's uploads (paths); earlier pictures come from the history."""
    pictures = [p for p in pictures if p]
    if not (message or "").strip() and not pictures:
        raise ValueError("Type a question about the picture, or add a picture first.")
    checked = []
    for p in pictures:  # refuse a bad upload now, before the model is loaded
        safe = load_image(p)
        checked.append((p, safe))
    roots = allowed_roots(studio)
    text = (message or "").strip() or "Describe this picture."
    user = {"role": "user", "content": [{"path": p} for p, _ in checked] + [text]}
    history = list(history) + [user]
    messages = history_to_messages(cfg.system_prompt, history[:-1], roots)
    turn = [{"type": "image", "image": safe.image, "name": safe.name} for _, safe in checked]
    messages.append({"role": "user", "content": turn + [{"type": "text", "text": text}]})
    if count_pictures(messages) > MAX_PICTURES:
        raise ValueError(f"At most {MAX_PICTURES} pictures per conversation: start a new chat.")
    engine = engine_for(studio, cfg, adapter=adapter)
    answer = {"role": "assistant", "content": ""}
    shown = history + [answer]
    for _, safe in checked:
        for note in safe.notes:
            shown.insert(len(shown) - 1, {"role": "assistant", "content": f"{safe.name}: {note}",
                                          "metadata": {"title": "Note"}})
    yield _copy(shown), stats_line(studio, engine, None)
    names = tuple(f"{p['name']}: " for m in messages if isinstance(m["content"], list)
                  for p in m["content"] if p["type"] == "image")
    for ev in engine.stream_chat(messages, cfg.settings, stop_event=stop_event):
        if ev.kind == "text":
            answer["content"] += ev.text
        elif ev.kind == "notice":
            if not ev.text.startswith(names):  # picture notes were shown when it was sent
                shown.insert(len(shown) - 1, {"role": "assistant", "content": ev.text,
                                              "metadata": {"title": "Note"}})
        elif ev.kind == "done":
            answer["content"] = ev.text or answer["content"]
            yield _copy(shown), stats_line(studio, engine, ev.stats)
            return
        yield _copy(shown), stats_line(studio, engine, None)


def _copy(messages: list[dict]) -> list[dict]:
    return [dict(m) for m in messages]


def last_picture(history: list[dict], roots: list[Path]) -> Path | None:
    """The newest picture of the conversation (the one grounding boxes refer to)."""
    for m in reversed(history):
        if m.get("role") != "user":
            continue
        files = [v for k, v in _parts(m.get("content")) if k == "file"]
        for f in reversed(files):
            p = _allowed(f, roots)
            if p is not None:
                return p
    return None


def last_answer(history: list[dict]) -> str:
    for m in reversed(history):
        if m.get("role") == "assistant" and not (m.get("metadata") or {}).get("title"):
            return "".join(v for k, v in _parts(m.get("content")) if k == "text")
    return ""


# ----- grounding --------------------------------------------------------------------------------
@dataclass
class Grounding:
    """Boxes found in an answer, the picture with them drawn, and a line for the user."""

    boxes: list[GroundedBox]
    drawn: Path | None
    summary: str


def model_input_size(studio: Any, cfg: VLMChatConfig, image: Any) -> tuple[int, int] | None:
    """(w, h) of the picture as a dynamic-resolution model sees it (Qwen2.5-VL's absolute box
    coordinates are in it), from the model's own image processor (that of the loaded model,
    else the processor alone, read once); None for fixed-size models."""
    from studio.hub import NotOnDisk

    try:
        src = source_for(studio, cfg)
    except NotOnDisk:  # no model files here: the boxes are taken as picture pixels
        return None
    ip = _image_processor(studio, src)
    if ip is None or not hasattr(ip, "merge_size"):
        return None
    grid = ip(images=[image], return_tensors="pt")["image_grid_thw"][0].tolist()
    patch = int(getattr(ip, "patch_size", 14))
    return int(grid[2]) * patch, int(grid[1]) * patch


def _image_processor(studio: Any, src: VLMSource) -> Any:
    from tabs.vlm.engine import cap_pixels

    llm = studio.models.get_loaded(src.key)  # the engine's key at the default context
    if llm is not None:
        return getattr(llm.processor, "image_processor", None)
    cache = studio.service("vlm_processors", lambda _: {})
    if src.key not in cache:
        from transformers import AutoProcessor

        try:
            proc = AutoProcessor.from_pretrained(src.source)
            cap_pixels(proc, src.max_pixels)
            cache[src.key] = getattr(proc, "image_processor", None)
        except (OSError, ValueError, KeyError):
            cache[src.key] = None  # not available here: boxes are taken as picture pixels
    return cache[src.key]


def work_dir(studio: Any) -> Path:
    d = Path(studio.settings.home) / "vlm" / "work"
    d.mkdir(parents=True, exist_ok=True)
    return d


def ground(studio: Any, cfg: VLMChatConfig, answer: str, picture: str | Path | None
           ) -> Grounding:
    """Parse the boxes of `answer` against `picture` and draw them."""
    if not picture:
        return Grounding([], None, "")
    safe = load_image(picture)
    boxes = parse_boxes(answer, safe.image.size, model_input_size(studio, cfg, safe.image))
    if not boxes:
        return Grounding([], None, "")
    out = work_dir(studio) / f"grounded-{uuid.uuid4().hex[:12]}.png"
    draw_boxes(safe.image, boxes).save(out)
    labels = sorted({b.label for b in boxes})
    return Grounding(boxes, out, f"{len(boxes)} box{'es' if len(boxes) != 1 else ''}: "
                                 f"{', '.join(labels)}")


def json_boxes(boxes: list[GroundedBox]) -> str:
    """The boxes as the tab's editable JSON (and what `to_yolo` takes back)."""
    import json

    return json.dumps([b.as_dict() for b in boxes], indent=1)


def to_yolo(studio: Any, dataset: str, picture: str | None, boxes: Any) -> str:
    """Send the picture and its boxes (as the tab shows them, possibly edited) to the YOLO
    labeler's dataset as pre-labels."""
    from tabs.yolo.service import get_service

    if not picture:
        raise ValueError("No picture: send a picture and ask where things are first.")
    try:
        safe = load_image(picture)
    except ImageRefused as e:
        raise ValueError(str(e)) from None
    parsed = boxes_from_json(boxes, safe.image.size)
    stem = Path(safe.name).stem or "picture"
    png = work_dir(studio) / f"{uuid.uuid4().hex[:8]}" / f"{stem}.png"
    png.parent.mkdir(parents=True)
    safe.image.save(png)  # the pixels the boxes refer to (rotation, conversion applied)
    return send_to_yolo(get_service(studio), dataset, png, parsed)
