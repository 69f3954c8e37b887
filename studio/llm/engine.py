"""The local backend: a transformers chat model loaded through the studio's model manager.

Loads from a hub id (real users), a local folder, or a single ``.gguf`` file; int4 (the
engine's decode format, `studio.llm.int4`: tinygemm, quantized at load from bf16 or from a
4-bit NF4 base; the default on CUDA for the Llama-family models the fast path drives), NF4 4-bit
with bitsandbytes, bf16/fp16, or float32 on CPU.
The model is registered with `studio.models` as a `ModelSpec`, so the manager measures it,
pins it while a reply streams, and evicts it when another tab needs the memory. Decoding uses
`studio.llm.fast.StaticDecoder` (static KV cache, CUDA graphs) for Llama-family models and
``generate()`` for anything else.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from studio.llm.base import ChatEvent, GenerationSettings, LLMEngine, LLMError, TurnStats
from studio.llm.tools import parse_tool_calls, require_tool_style, tool_style, visible_text

log = logging.getLogger("studio.llm")

DEFAULT_CONTEXT = 8192
ADAPTER_NAME = "studio_adapter"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_END_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|endoftext|>", "<|end_of_text|>")


class ModelLoadError(LLMError):
    """The model could not be found or loaded; the message says what to fix."""


@dataclass(frozen=True)
class ModelSource:
    """Where a chat model comes from and how to load it."""

    source: str  # hub id, local folder, or .gguf file
    quantization: str = "auto"  # auto | int4 | nf4 | bf16 | fp16 | fp32 | gguf | none
    gguf_file: str | None = None
    title: str = ""

    @property
    def key(self) -> str:
        """Built from what is loaded (the resolved source, quantization, GGUF file), never the
        display title: the same weights under two titles are one model in memory."""
        where = self.source.strip()
        path = Path(where).expanduser()
        if path.exists():
            where = str(path.resolve())
        digest = hashlib.sha1(f"{where}|{self.quantization}|{self.gguf_file}".encode())
        return f"llm:{Path(where).name or where}:{digest.hexdigest()[:8]}"


def resolve_source(src: ModelSource) -> tuple[str, str | None]:
    """(folder or hub id, gguf file name) for `src`, or a ModelLoadError saying what is wrong."""
    text = src.source.strip()
    if not text:
        raise ModelLoadError("No model given: enter a hub id, a model folder or a .gguf file.")
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(
                f"Unsupported model file {path.name!r}: give a model folder (config.json and "
                "weights) or a single .gguf file.")
        return str(path.parent), path.name
    if path.is_dir():
        if src.gguf_file:
            if not (path / src.gguf_file).is_file():
                raise ModelLoadError(f"{src.gguf_file} is not in {path}.")
            return str(path), src.gguf_file
        if (path / "config.json").is_file():
            return str(path), None
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(path), ggufs[0].name
        if ggufs:
            names = ", ".join(g.name for g in ggufs)
            raise ModelLoadError(f"{path} holds several .gguf files ({names}); pick one.")
        raise ModelLoadError(
            f"{path} is not a model folder: it has no config.json and no .gguf file.")
    looks_local = text.startswith(("/", ".", "~")) or text.lower().endswith(".gguf") \
        or "\\" in text or not _HUB_ID.match(text)
    if looks_local:
        raise ModelLoadError(f"No such model file or folder: {text}")
    return text, src.gguf_file


def _dtype_for(quantization: str, device: str):
    import torch

    if device != "cuda":
        return torch.float32
    return {"fp16": torch.float16, "fp32": torch.float32}.get(quantization, torch.bfloat16)


@dataclass
class LoadedLLM:
    """What the model manager holds for one chat model."""

    model: Any
    tokenizer: Any
    device: str
    quantization: str
    max_context: int
    eos_ids: frozenset[int]
    decoder: Any = None  # StaticDecoder or None (generic generate() path)
    adapter: str | None = None
    format: str = ""  # what the ledger and the load message show, e.g. "int4 g128 (tinygemm)"
    notes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        """Drop the decode buffers and graphs (the manager then drops the model)."""
        if self.decoder is not None:
            self.decoder.reset_graphs()
            self.decoder = None


def _eos_ids(model, tokenizer) -> frozenset[int]:
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in _END_TOKENS if t in vocab)
    return frozenset(i for i in ids if i is not None)


def _config_of(where: str, gguf_file: str | None, local_only: bool = True):
    """The checkpoint's config without loading weights (None if it cannot be read; a hub id
    is read from the local cache only unless `local_only` is False)."""
    if gguf_file:
        return None
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(where, local_files_only=local_only)
    except Exception:
        return None


def _prequantized_4bit(cfg) -> bool:
    qc = getattr(cfg, "quantization_config", None)
    if qc is None:
        return False
    get = qc.get if isinstance(qc, dict) else (lambda k, d=None: getattr(qc, k, d))
    return bool(get("load_in_4bit", False) or get("_load_in_4bit", False))


def planned_quantization(src: ModelSource, device: str, local_only: bool = True) -> str:
    """What ``auto`` becomes for `src` on `device`, read from the config alone: int4 on CUDA for
    the architectures the fast decode path drives, NF4 for other models, the GGUF's own weights
    for a .gguf, float32 on CPU."""
    if src.quantization != "auto":
        return src.quantization
    try:
        where, gguf_file = resolve_source(src)
    except ModelLoadError:
        return "auto"
    if gguf_file:
        return "gguf"
    if device != "cuda":
        return "fp32"
    from studio.llm.fast import FAST_MODEL_TYPES

    cfg = _config_of(where, gguf_file, local_only)
    text = cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
    if text is not None and getattr(text, "model_type", None) in FAST_MODEL_TYPES and \
            not getattr(text, "use_sliding_window", False):
        return "int4"
    return "nf4"


def format_label(quant: str) -> str:
    from studio.llm import int4

    labels = {"int4": int4.format_label(int4.GROUP, int4.QUANTIZE_HEAD),
              "nf4": "NF4 (bitsandbytes)"}
    return labels.get(quant, quant)


def _load_int4(where: str, kwargs: dict[str, Any], device: str, notes: list[str]):
    """int4: from the bf16 (or GGUF) weights in CPU RAM, or from a 4-bit NF4 base on the GPU
    (dequantized layer by layer), quantized into `studio.llm.int4` on `device`."""
    import torch
    from transformers import AutoModelForCausalLM

    from studio.llm import int4

    cfg = _config_of(where, kwargs.get("gguf_file"), local_only=False)
    load = dict(kwargs)
    if cfg is not None and _prequantized_4bit(cfg):
        if device != "cuda":
            raise ModelLoadError(f"{where} is a 4-bit bitsandbytes checkpoint: it needs CUDA.")
        load["device_map"] = {"": 0}
        notes.append("Converted the checkpoint's NF4 weights to int4 at load.")
    else:
        load["dtype"] = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(where, **load)
    try:
        int4.quantize_model(model, device, group=int4.GROUP, head=int4.QUANTIZE_HEAD)
    except ValueError as exc:
        raise ModelLoadError(f"int4 does not fit this model ({exc}); choose nf4 or bf16.") \
            from exc
    return model


def load_llm(src: ModelSource, device: str, max_context: int = DEFAULT_CONTEXT,
             fast: bool = True) -> LoadedLLM:
    """Load tokenizer + model for `src` onto `device`. Raises ModelLoadError in plain words."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.llm.fast import StaticDecoder, supports_fast_decode

    where, gguf_file = resolve_source(src)
    quant = planned_quantization(src, device, local_only=False)
    if quant == "auto":
        quant = "nf4" if device == "cuda" else "fp32"
    notes = []
    kwargs: dict[str, Any] = {"dtype": _dtype_for(quant, device)}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if quant == "nf4":
        if device != "cuda":
            notes.append("4-bit NF4 needs a CUDA GPU; loaded in float32 on the CPU instead.")
            quant = "fp32"
        else:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=kwargs["dtype"])
            kwargs["device_map"] = {"": 0}
    try:
        tok_kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(where, **tok_kwargs)
        if quant == "int4":
            model = _load_int4(where, kwargs, device, notes)  # placed by the conversion
        else:
            model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        hint = ""
        if _HUB_ID.match(where) and not Path(where).exists():
            hint = " (a hub id needs internet or a copy in the Hugging Face cache)"
        raise ModelLoadError(f"Could not load {src.source}{hint}: {exc}") from exc
    if "device_map" not in kwargs and quant != "int4":
        model = model.to(device)
    model.eval()
    if not tokenizer.chat_template:
        notes.append("This model's tokenizer has no chat template; prompts use plain text.")
    ctx = int(min(max_context, getattr(model.config, "max_position_embeddings", max_context)))
    decoder = StaticDecoder(model, ctx) if fast and supports_fast_decode(model) else None
    return LoadedLLM(model=model, tokenizer=tokenizer, device=device, quantization=quant,
                     max_context=ctx, eos_ids=_eos_ids(model, tokenizer), decoder=decoder,
                     notes=notes,
                     format=getattr(model, "studio_format", None) or format_label(quant))


class LLMSwap:
    """The warm tier for a loaded chat model: the weights go to pinned CPU RAM
    (`studio.models.PinnedSwap`), the decoder's cache and graphs are freed, and a restore copies
    the weights back and rebuilds cache, RoPE tables and graphs (captured graphs hold device
    pointers of tensors that no longer exist)."""

    def __init__(self):
        from studio.models import PinnedSwap

        self.swap = PinnedSwap()

    def prestage(self, llm: LoadedLLM) -> None:
        self.swap.prestage(llm.model)  # a side-stream copy: replies keep running

    def offload(self, llm: LoadedLLM) -> LoadedLLM:
        with llm.lock:
            if llm.decoder is not None:
                llm.decoder.release()
            self.swap.offload(llm.model)
        return llm

    def restore(self, llm: LoadedLLM, device: str) -> LoadedLLM:
        with llm.lock:
            self.swap.restore(llm.model, device)
            if llm.decoder is not None:
                llm.decoder.rebuild()
        return llm

    def unload(self, llm: LoadedLLM) -> None:
        llm.close()
        self.swap.clear()

    def spec_kwargs(self) -> dict[str, Any]:
        return {"offload": self.offload, "restore": self.restore, "unload": self.unload,
                "prestage": self.prestage}


# ----- sampling and detokenizing ------------------------------------------------------------
class Sampler:
    """Picks the next token from logits with the transformers logits processors, on device."""

    def __init__(self, settings: GenerationSettings, device, prompt_len: int):
        import torch
        from transformers import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.greedy = settings.temperature == 0
        procs = []
        if settings.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
        if not self.greedy:
            procs.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_k:
                procs.append(TopKLogitsWarper(settings.top_k))
            if settings.top_p < 1.0:
                procs.append(TopPLogitsWarper(settings.top_p))
        self.processors = LogitsProcessorList(procs)
        self.needs_ids = settings.repetition_penalty != 1.0
        self.generator = torch.Generator(device=device)
        if settings.seed is not None:
            self.generator.manual_seed(int(settings.seed))
        else:
            self.generator.seed()
        self.device = device
        self._ids = torch.zeros((1, prompt_len + settings.max_new_tokens + 1), dtype=torch.long,
                                device=device)
        self._n = 0

    def __call__(self, logits, ids: list[int]) -> int:
        import torch

        if self.needs_ids and len(ids) > self._n:
            new = torch.tensor(ids[self._n:], dtype=torch.long)
            self._ids[0, self._n:len(ids)] = new.to(self.device, non_blocking=True)
            self._n = len(ids)
        scores = logits
        if len(self.processors):
            scores = self.processors(self._ids[:, :self._n], logits.clone())
        if self.greedy:
            return int(scores.argmax(dim=-1).item())
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator).item())


class Detokenizer:
    """Turns a growing list of token ids into text deltas without splitting characters."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        dec = self.tokenizer.decode
        before = dec(self.ids[self._prefix:self._read], skip_special_tokens=True)
        now = dec(self.ids[self._prefix:], skip_special_tokens=True)
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return now[len(before):]
        return ""

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)


class _IdStreamer:
    """A transformers streamer that hands generated ids to the request thread."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self._first = True

    def put(self, value) -> None:
        if self._first:  # generate() first sends the prompt
            self._first = False
            return
        for t in value.reshape(-1).tolist():
            self.queue.put(int(t))

    def end(self) -> None:
        self.queue.put(None)


def _generic_tokens(llm: LoadedLLM, prompt_ids: list[int], settings: GenerationSettings,
                    stop_event: threading.Event | None,
                    extra: dict[str, Any] | None = None) -> Iterator[int]:
    """Token ids from ``model.generate()`` for architectures the fast path does not know.

    Stop reaches the device through a StoppingCriteria that checks the event every step.
    `extra`: more model inputs (a VLM's pixel values, image grid).
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _EventStop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stop = stop_event is not None and stop_event.is_set()
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool,
                              device=input_ids.device)

    streamer = _IdStreamer()
    if settings.seed is not None:
        torch.manual_seed(int(settings.seed))
    sample = settings.temperature > 0
    kwargs = dict(
        input_ids=torch.tensor([prompt_ids], device=llm.model.device),
        attention_mask=torch.ones((1, len(prompt_ids)), dtype=torch.long,
                                  device=llm.model.device),
        max_new_tokens=settings.max_new_tokens, do_sample=sample,
        repetition_penalty=settings.repetition_penalty, streamer=streamer,
        stopping_criteria=StoppingCriteriaList([_EventStop()]),
        eos_token_id=sorted(llm.eos_ids), pad_token_id=min(llm.eos_ids) if llm.eos_ids else 0,
        **(extra or {}),
    )
    if sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p,
                      top_k=settings.top_k or None)
    errors: list[BaseException] = []

    def work():
        try:
            with torch.inference_mode():
                llm.model.generate(**kwargs)
        except BaseException as exc:  # surfaced in the request thread below
            errors.append(exc)
        finally:
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while (tok := streamer.queue.get()) is not None:
            yield tok
    finally:
        if stop_event is not None:
            stop_event.set()  # an abandoned stream stops the device loop too
        thread.join()
    if errors:
        raise errors[0]


# ----- the engine -----------------------------------------------------------------------------
class TransformersEngine(LLMEngine):
    """A local chat model. Loading is lazy: the first reply loads it through the manager."""

    def __init__(self, studio, source: ModelSource, max_context: int = DEFAULT_CONTEXT,
                 fast: bool = True, adapter: str | None = None):
        self.studio = studio
        self.name = source.title or source.source
        self.source = source = keyed_source(source, studio.probe.device)
        # what is loaded: the weights, and the context / decode path they are loaded with
        self.key = source.key + ("" if max_context == DEFAULT_CONTEXT else f":ctx{max_context}") \
            + ("" if fast else ":generate")
        self.max_context = max_context
        self.fast = fast
        # This engine's adapter. The shared model is switched to it inside `stream_turn`,
        # under the model's lock, so each request is answered by its own engine's adapter.
        self.adapter: str | None = _adapter_folder(adapter) if adapter else None
        self.last_stats: TurnStats | None = None  # of the last finished turn (server, UI)
        self._register()

    @classmethod
    def from_choice(cls, studio, choice, **kwargs) -> TransformersEngine:
        """An engine for a profile's `ModelChoice` (role 'chat' of the small or full profile)."""
        if choice.source is None:
            raise ModelLoadError(f"{choice.title}: {choice.note or 'not available here'}")
        src = ModelSource(choice.source, choice.quantization, choice.gguf_file, choice.title)
        return cls(studio, src, **kwargs)

    def _register(self) -> None:
        from studio.models import ModelSpec

        cuda = self.studio.probe.device == "cuda"
        source, max_context, fast = self.source, self.max_context, self.fast
        device = self.studio.probe.device

        def spec() -> ModelSpec:
            quant = planned_quantization(source, device)
            return ModelSpec(
                key=self.key,
                load=lambda device: load_llm(source, device, max_context, fast),
                title=f"{self.name} · {format_label(quant)}",  # the ledger shows the format
                estimate=_estimate_bytes(source, quant),
                reserve=512 * 1024**2 if cuda else 0,
                **LLMSwap().spec_kwargs(),
            )

        self.studio.models.ensure(self.key, spec)

    # ----- adapters -------------------------------------------------------------------------
    def attach_adapter(self, path: str) -> None:
        """Use a PEFT (LoRA) adapter from `path` on top of the base, without reloading it.

        This engine's setting: for a request of its own, make an engine with ``adapter=``
        rather than attaching to an engine other sessions use."""
        self.adapter = _adapter_folder(path)
        self._sync_now()

    def detach_adapter(self) -> None:
        """Back to the plain base model (the adapter's layers are removed)."""
        self.adapter = None
        self._sync_now()

    def _sync_now(self) -> None:
        llm = self.studio.models.get_loaded(self.key)
        if llm is not None:
            with self.studio.models.use(self.key) as llm, llm.lock:
                self._sync_adapter(llm)

    def _sync_adapter(self, llm: LoadedLLM) -> None:
        if llm.adapter == self.adapter:
            return
        if llm.quantization == "int4":  # LoRA on the int4 layers themselves, inside the graphs
            from studio.llm import int4

            int4.detach_lora(llm.model)
            llm.adapter = None
            if self.adapter is not None:
                try:
                    int4.attach_lora(llm.model, self.adapter)
                except (OSError, ValueError, KeyError) as exc:
                    int4.detach_lora(llm.model)  # nothing half-attached stays behind
                    raise ModelLoadError(f"Could not attach adapter {self.adapter}: {exc}") \
                        from exc
                llm.adapter = self.adapter
            if llm.decoder is not None:
                llm.decoder.reset_graphs()
            return
        if llm.adapter is not None:
            llm.model.delete_adapter(ADAPTER_NAME)
            llm.adapter = None
        if self.adapter is not None:
            try:
                llm.model.load_adapter(self.adapter, adapter_name=ADAPTER_NAME)
                llm.model.set_adapter(ADAPTER_NAME)
            except Exception as exc:
                # whichever tab asked: the shared base answers as itself again and the next
                # attach starts clean (PEFT refuses a name that exists)
                remove_half_attached(llm.model)
                if llm.decoder is not None:
                    llm.decoder.reset_graphs()
                raise ModelLoadError(f"Could not attach adapter {self.adapter}: {exc}") from exc
            llm.adapter = self.adapter
        if llm.decoder is not None:
            llm.decoder.reset_graphs()

    # ----- templates and the context guard --------------------------------------------------
    def check_tools(self) -> None:
        with self.studio.models.use(self.key) as llm:
            require_tool_style(llm.tokenizer.chat_template, self.name)

    @staticmethod
    def render(llm: LoadedLLM, messages: list[dict], tool_schemas: list[dict] | None
               ) -> list[int]:
        tok = llm.tokenizer
        if tok.chat_template:
            text = tok.apply_chat_template(messages, tools=tool_schemas,
                                           add_generation_prompt=True, tokenize=False)
        else:
            text = "\n\n".join(f"{m['role']}: {m.get('content') or ''}" for m in messages)
            text += "\n\nassistant:"
        return tok(text, add_special_tokens=False)["input_ids"]

    def fit_context(self, llm: LoadedLLM, messages: list[dict], tool_schemas: list[dict] | None,
                    max_new_tokens: int) -> tuple[list[int], int]:
        """Prompt ids that leave room for the reply, dropping the oldest turns if needed.

        Returns (ids, number of messages dropped). The system prompt and the last user
        message are always kept; if those alone do not fit, a clear ValueError says so.
        """
        budget = llm.max_context - min(max_new_tokens, llm.max_context // 2)
        system = messages[:1] if messages and messages[0].get("role") == "system" else []
        rest = messages[len(system):]
        ids = self.render(llm, system + rest, tool_schemas)
        dropped = 0
        while len(ids) > budget and len(rest) > 1:
            rest = rest[1:]
            dropped += 1
            while len(rest) > 1 and rest[0].get("role") != "user":
                rest = rest[1:]
                dropped += 1
            ids = self.render(llm, system + rest, tool_schemas)
        if len(ids) > budget:
            raise ValueError(
                f"The message is too long for this model: {len(ids)} tokens, while the context "
                f"holds {llm.max_context} with room kept for the reply. Shorten it or lower "
                "max new tokens.")
        return ids, dropped

    # ----- one turn ---------------------------------------------------------------------------
    def stream_turn(self, messages, settings, tool_schemas, stop_event):
        t0 = time.perf_counter()
        with self.studio.models.use(self.key) as llm, llm.lock:
            self._sync_adapter(llm)
            style = tool_style(llm.tokenizer.chat_template) if tool_schemas else None
            for note in llm.notes:
                yield ChatEvent("notice", text=note)
            llm.notes = []
            prompt_ids, dropped = self.fit_context(llm, messages, tool_schemas,
                                                   settings.max_new_tokens)
            if dropped:
                yield ChatEvent("notice", text=(
                    f"Trimmed {dropped} earlier message{'s' if dropped != 1 else ''} to fit the "
                    f"{llm.max_context}-token context."))
            max_new = min(settings.max_new_tokens, llm.max_context - len(prompt_ids))
            stats = TurnStats(prompt_tokens=len(prompt_ids), trimmed_messages=dropped)
            cuda = llm.device == "cuda"
            if cuda:
                import torch

                torch.cuda.reset_peak_memory_stats()
            stop = stop_event.is_set if stop_event is not None else None
            if llm.decoder is not None:
                sampler = Sampler(settings, llm.decoder.device, len(prompt_ids))
                tokens = llm.decoder.generate(prompt_ids, max_new, sampler, stop, llm.eos_ids)
            else:
                tokens = _generic_tokens(llm, prompt_ids,
                                         GenerationSettings(**{**settings.__dict__,
                                                               "max_new_tokens": max_new}),
                                         stop_event)
            self.last_stats = stats  # filled in by turn_events as the turn goes
            yield from turn_events(llm, tokens, stats, t0, stop_event, style)


def turn_events(llm: LoadedLLM, tokens: Iterator[int], stats: TurnStats, t0: float,
                stop_event: threading.Event | None, style: str | None = None
                ) -> Iterator[ChatEvent]:
    """Generated ids -> ``text`` deltas (whole characters, tool-call markup held back), then the
    ``turn`` event with the full text, tool calls and `stats` filled in (TTFT from `t0`,
    decode tokens/s, peak VRAM). Shared by the chat engine and the VLM tab's engine."""
    detok = Detokenizer(llm.tokenizer)
    full, shown = "", 0
    t_first = None
    finish = "length"
    for tok in tokens:
        if t_first is None:
            t_first = time.perf_counter()
        stats.new_tokens += 1
        if tok in llm.eos_ids:
            finish = "stop"
            break
        full += detok.push(tok)
        visible = visible_text(full, style)
        if len(visible) > shown:
            yield ChatEvent("text", text=visible[shown:])
            shown = len(visible)
    if stop_event is not None and stop_event.is_set():
        stats.stopped, finish = True, "cancelled"
    t_end = time.perf_counter()
    text = detok.text()
    content, calls = parse_tool_calls(text, style) if style else (text, [])
    if calls:
        finish = "tool_calls"
    elif len(content) > shown and not stats.stopped:
        yield ChatEvent("text", text=content[shown:])  # held-back text that was no call
    stats.finish_reason = finish
    stats.total_s = t_end - t0
    stats.ttft_s = (t_first or t_end) - t0
    if stats.new_tokens > 1 and t_first is not None:
        stats.decode_tokens_per_s = (stats.new_tokens - 1) / max(t_end - t_first, 1e-9)
    if llm.device == "cuda":
        import torch

        stats.peak_vram = torch.cuda.max_memory_allocated()
    yield ChatEvent("turn", text=content, tool_calls=calls, stats=stats)


def remove_half_attached(model: Any) -> bool:
    """Take what PEFT injected of the studio's adapter back out of `model` after an attach
    failed part-way (shapes of another base, a half-written folder): the base answers as itself
    again, stays loaded once, and the next attach starts clean. True when something was
    removed."""
    if ADAPTER_NAME not in (getattr(model, "peft_config", None) or {}):
        return False
    try:
        model.delete_adapter(ADAPTER_NAME)
    except (ValueError, KeyError, AttributeError):  # injected only in part
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in model.modules():
            if isinstance(module, BaseTunerLayer) and ADAPTER_NAME in getattr(module, "lora_A",
                                                                              {}):
                module.delete_adapter(ADAPTER_NAME)
        model.peft_config.pop(ADAPTER_NAME, None)
    return True


def keyed_source(src: ModelSource, device: str) -> ModelSource:
    """`src` with "auto" replaced by what it loads as on `device`, where that is settled without
    the hub (a .gguf, a CPU, a config on disk): the same weights asked for as "auto" by one tab
    and as "gguf" (or fp32 on a CPU) by another are one copy in memory, not two."""
    if src.quantization != "auto":
        return src
    try:
        where, gguf_file = resolve_source(src)
    except ModelLoadError:
        return src
    if not gguf_file and device == "cuda" and _config_of(where, None) is None:
        return src  # decided when it loads (the config may need the hub)
    planned = planned_quantization(src, device)
    return src if planned == "auto" else replace(src, quantization=planned)


def _adapter_folder(path: str) -> str:
    p = Path(path).expanduser()
    if not (p / "adapter_config.json").is_file():
        raise ModelLoadError(f"{path} is not a PEFT adapter folder (no adapter_config.json).")
    return str(p)


def _estimate_bytes(src: ModelSource, quant: str | None = None) -> int:
    """A size hint for making room before the first load (the manager measures after)."""
    try:
        where, gguf_file = resolve_source(src)
    except ModelLoadError:
        return 0
    p = Path(where)
    if not p.is_dir():
        return 0
    if gguf_file:
        return (p / gguf_file).stat().st_size
    size = sum(f.stat().st_size for f in p.glob("*.safetensors"))
    quant = quant or src.quantization
    return size // 3 if quant in ("nf4", "int4", "auto") else size
