"""The VLM engine: a vision-language model behind the studio's LLM engine.

`VLMEngine` is a `TransformersEngine` whose model is loaded with `AutoModelForImageTextToText`
and `AutoProcessor` (4-bit NF4 on CUDA for the language model; the vision tower and projector
stay in bf16) and whose prompts carry pictures. Everything else is the chat engine's: the model
manager (measured, pinned while a reply streams, evicted LRU), Stop within a token, sampling and
seed, tokens/s, TTFT and VRAM, PEFT adapters. Decoding uses the engine's static KV cache and
CUDA-graph step (`studio.llm.fast.StaticDecoder`): the vision encoder and projector run once,
at prefill (`embed_prompt`), and the prompt enters the decoder as embeddings; architectures the
fast path does not know fall back to ``generate()`` with the pixel inputs.

Messages are OpenAI-style dicts whose ``content`` is a string or a list of parts:
``{"type": "text", "text": ...}`` and ``{"type": "image", "image": <path or PIL image>}``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.llm.base import ChatEvent, GenerationSettings, TurnStats
from studio.llm.engine import (
    _HUB_ID,
    LoadedLLM,
    ModelLoadError,
    ModelSource,
    Sampler,
    TransformersEngine,
    _dtype_for,
    _eos_ids,
    _estimate_bytes,
    _generic_tokens,
    resolve_source,
    turn_events,
)
from tabs.vlm.images import load_image

DEFAULT_CONTEXT = 8192
# kept out of 4-bit: small next to the language model, and quantizing them costs accuracy
SKIP_QUANT = ["vision_tower", "multi_modal_projector", "visual", "vision_model", "connector",
              "lm_head"]
TEXT_ONLY_INPUTS = ("input_ids", "attention_mask")


@dataclass(frozen=True)
class VLMSource:
    """Where a VLM comes from and how to load it. `max_pixels` caps the picture resolution of
    dynamic-resolution models (Qwen2-VL/2.5-VL): fewer pixels, fewer image tokens, less VRAM."""

    source: str  # hub id or local folder
    quantization: str = "auto"  # auto | nf4 | int4 | bf16 | fp16 | fp32
    title: str = ""
    max_pixels: int | None = None

    @property
    def key(self) -> str:
        """Built from what is loaded (resolved source, quantization, pixel cap), not the title."""
        where = self.source.strip()
        path = Path(where).expanduser()
        if path.exists():
            where = str(path.resolve())
        digest = hashlib.sha1(f"{where}|{self.quantization}|{self.max_pixels}".encode())
        return f"vlm:{Path(where).name or where}:{digest.hexdigest()[:8]}"

    def as_model_source(self) -> ModelSource:
        return ModelSource(self.source, self.quantization, title=self.title)


@dataclass
class LoadedVLM(LoadedLLM):
    """What the model manager holds for one VLM: the chat record plus the processor."""

    processor: Any = None
    model_type: str = ""


def cap_pixels(processor: Any, max_pixels: int | None) -> None:
    """Cap a dynamic-resolution image processor (Qwen2-VL family) at `max_pixels`."""
    ip = getattr(processor, "image_processor", None)
    if max_pixels is None or ip is None or not hasattr(ip, "max_pixels"):
        return
    ip.max_pixels = int(max_pixels)
    ip.min_pixels = min(getattr(ip, "min_pixels", 0) or 0, int(max_pixels))
    size = getattr(ip, "size", None)
    if isinstance(size, dict) and "longest_edge" in size:
        ip.size = {**size, "longest_edge": int(max_pixels),
                   "shortest_edge": min(size.get("shortest_edge", 0), int(max_pixels))}


def load_vlm(src: VLMSource, device: str, max_context: int = DEFAULT_CONTEXT,
             fast: bool = True) -> LoadedVLM:
    """Processor + model for `src` onto `device`. Raises ModelLoadError in plain words."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from studio.llm.fast import StaticDecoder, supports_fast_decode, text_config

    where, gguf = resolve_source(src.as_model_source())
    if gguf:
        raise ModelLoadError("A .gguf file holds no vision tower: give a VLM's model folder or "
                             "hub id (e.g. Qwen/Qwen2.5-VL-7B-Instruct).")
    quant = src.quantization
    if quant == "auto":
        quant = "nf4" if device == "cuda" else "fp32"
    notes = []
    kwargs: dict[str, Any] = {"dtype": _dtype_for(quant, device)}
    if quant == "nf4":
        if device != "cuda":
            notes.append("4-bit NF4 needs a CUDA GPU; loaded in float32 on the CPU instead.")
            quant = "fp32"
            kwargs["dtype"] = _dtype_for(quant, device)
        else:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=kwargs["dtype"], llm_int8_skip_modules=SKIP_QUANT)
            kwargs["device_map"] = {"": 0}
    try:
        processor = AutoProcessor.from_pretrained(where)
        model = AutoModelForImageTextToText.from_pretrained(where, **kwargs)
        if quant == "int4":  # the language model's layers in the engine's int4 format
            from studio.llm import int4

            int4.quantize_model(model, device, group=int4.GROUP, head=int4.QUANTIZE_HEAD)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        hint = ""
        if _HUB_ID.match(where) and not Path(where).exists():
            hint = " (a hub id needs internet or a copy in the Hugging Face cache)"
        raise ModelLoadError(f"Could not load {src.source} as a vision-language model{hint}: "
                             f"{exc}") from exc
    if "device_map" not in kwargs and quant != "int4":
        model = model.to(device)
    model.eval()
    cap_pixels(processor, src.max_pixels)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise ModelLoadError(f"{src.source}: its processor has no tokenizer")
    if not (getattr(processor, "chat_template", None) or tokenizer.chat_template):
        raise ModelLoadError(f"{src.source}: the processor has no chat template, so pictures "
                             "cannot be placed in the prompt")
    tcfg = text_config(model)
    ctx = int(min(max_context, getattr(tcfg, "max_position_embeddings", max_context)))
    decoder = StaticDecoder(model, ctx) if fast and supports_fast_decode(model) else None
    return LoadedVLM(model=model, tokenizer=tokenizer, device=device, quantization=quant,
                     max_context=ctx, eos_ids=_eos_ids(model, tokenizer), decoder=decoder,
                     notes=notes, processor=processor, model_type=model.config.model_type)


# ----- prompts with pictures ------------------------------------------------------------------
def split_images(messages: list[dict]) -> tuple[list[dict], list[Any], list[str]]:
    """Messages in the processor's template shape (image parts without their payload), the
    pictures in prompt order (checked, RGB), and notes on conversions."""
    out, images, notes = [], [], []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str) or content is None:
            out.append({"role": m["role"], "content": [{"type": "text",
                                                        "text": content or ""}]})
            continue
        parts = []
        for part in content:
            if part.get("type") == "image":
                safe = load_image(part["image"], part.get("name"))
                images.append(safe.image)
                notes += [f"{safe.name}: {n}" for n in safe.notes]
                parts.append({"type": "image"})
            else:
                parts.append({"type": "text", "text": str(part.get("text", ""))})
        out.append({"role": m["role"], "content": parts})
    return out, images, notes


def process(llm: LoadedVLM, messages: list[dict]) -> tuple[dict[str, Any], list[str]]:
    """Processor outputs (input_ids, pixel values, ...) for a conversation; notes on images."""
    shaped, images, notes = split_images(messages)
    proc = llm.processor
    text = proc.apply_chat_template(shaped, add_generation_prompt=True, tokenize=False)
    inputs = proc(text=[text], images=images or None, return_tensors="pt")
    return dict(inputs), notes


def embed_prompt(model: Any, inputs: dict[str, Any]) -> Any:
    """Run the vision encoder and projector once and return the prompt as the language model
    sees it (`PrefillInputs`: token embeddings with the image features in place, and RoPE
    positions, M-RoPE included). The model's own forward does the merging; a hook on its
    decoder stack catches the embeddings and stops before any decoder layer runs."""
    import torch

    from studio.llm.fast import PrefillInputs, decoder_stack

    stack = decoder_stack(model)
    caught: dict[str, Any] = {}

    class _Caught(Exception):
        pass

    def hook(module, args, kwargs):
        caught.update(kwargs)
        raise _Caught

    handle = stack.register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            model.model(**{k: v.to(device) if hasattr(v, "to") else v
                           for k, v in inputs.items()}, use_cache=False)
    except _Caught:
        pass
    finally:
        handle.remove()
    embeds = caught.get("inputs_embeds")
    if embeds is None:
        raise RuntimeError(f"{type(model).__name__} did not hand embeddings to its decoder")
    positions = caught.get("position_ids")
    if positions is not None:
        if positions.ndim == 3 and positions.shape[0] == 4:  # text positions first, then 3D
            positions = positions[1:]
        elif positions.ndim == 2 and torch.equal(
                positions[0], torch.arange(positions.shape[1], device=positions.device)):
            positions = None
    return PrefillInputs(embeds=embeds, positions=positions)


# ----- the engine -----------------------------------------------------------------------------
class VLMEngine(TransformersEngine):
    """A local VLM. Loading is lazy: the first reply loads it through the manager. Like the
    chat engine, an engine with an ``adapter`` is made per request; the weights are shared."""

    def __init__(self, studio, source: VLMSource, max_context: int = DEFAULT_CONTEXT,
                 fast: bool = True, adapter: str | None = None):
        self.vlm_source = source
        super().__init__(studio, source.as_model_source(), max_context, fast, adapter=adapter)

    def _register(self) -> None:
        from studio.models import ModelSpec

        src, max_context, fast = self.vlm_source, self.max_context, self.fast
        self.name = src.title or src.source
        self.key = src.key + ("" if max_context == DEFAULT_CONTEXT else f":ctx{max_context}") \
            + ("" if fast else ":generate")
        cuda = self.studio.probe.device == "cuda"
        self.studio.models.ensure(self.key, lambda: ModelSpec(
            key=self.key, title=self.name,
            load=lambda device: load_vlm(src, device, max_context, fast),
            estimate=_estimate_bytes(src.as_model_source()),
            reserve=1024**3 if cuda else 0,
            unload=lambda llm: llm.close(),
        ))

    def check_tools(self) -> None:
        raise ValueError("the vision tab does not run tools")

    def fit_context(self, llm: LoadedVLM, messages: list[dict], tool_schemas: Any,
                    max_new_tokens: int) -> tuple[tuple[dict[str, Any], list[str]], int]:
        """Processor inputs that leave room for the reply, dropping the oldest turns (and their
        pictures) if needed; the system prompt and the last user turn are always kept."""
        budget = llm.max_context - min(max_new_tokens, llm.max_context // 2)
        system = messages[:1] if messages and messages[0].get("role") == "system" else []
        rest = messages[len(system):]
        inputs, notes = process(llm, system + rest)
        dropped = 0
        while inputs["input_ids"].shape[1] > budget and len(rest) > 1:
            rest = rest[1:]
            dropped += 1
            while len(rest) > 1 and rest[0].get("role") != "user":
                rest = rest[1:]
                dropped += 1
            inputs, notes = process(llm, system + rest)
        n = inputs["input_ids"].shape[1]
        if n > budget:
            raise ValueError(
                f"The message is too long for this model: {n} tokens (pictures included), "
                f"while the context holds {llm.max_context} with room kept for the reply. Use "
                "a smaller picture, fewer pictures, or lower max new tokens.")
        return (inputs, notes), dropped

    def stream_turn(self, messages, settings, tool_schemas, stop_event):
        t0 = time.perf_counter()
        with self.studio.models.use(self.key) as llm, llm.lock:
            self._sync_adapter(llm)
            for note in llm.notes:
                yield ChatEvent("notice", text=note)
            llm.notes = []
            (inputs, notes), dropped = self.fit_context(llm, messages, None,
                                                        settings.max_new_tokens)
            for note in notes:
                yield ChatEvent("notice", text=note)
            if dropped:
                yield ChatEvent("notice", text=(
                    f"Trimmed {dropped} earlier message{'s' if dropped != 1 else ''} to fit the "
                    f"{llm.max_context}-token context."))
            prompt_ids = inputs["input_ids"][0].tolist()
            max_new = min(settings.max_new_tokens, llm.max_context - len(prompt_ids))
            stats = TurnStats(prompt_tokens=len(prompt_ids), trimmed_messages=dropped)
            if llm.device == "cuda":
                import torch

                torch.cuda.reset_peak_memory_stats()
            stop = stop_event.is_set if stop_event is not None else None
            if llm.decoder is not None:
                prefill = embed_prompt(llm.model, inputs)
                sampler = Sampler(settings, llm.decoder.device, len(prompt_ids))
                tokens = llm.decoder.generate(prompt_ids, max_new, sampler, stop, llm.eos_ids,
                                              inputs=prefill)
            else:
                extra = {k: v.to(llm.model.device) for k, v in inputs.items()
                         if k not in TEXT_ONLY_INPUTS and hasattr(v, "to")}
                tokens = _generic_tokens(
                    llm, prompt_ids,
                    GenerationSettings(**{**settings.__dict__, "max_new_tokens": max_new}),
                    stop_event, extra=extra)
            self.last_stats = stats
            yield from turn_events(llm, tokens, stats, t0, stop_event)
