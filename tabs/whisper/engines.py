"""Two ASR engines behind one interface, loaded through the studio's model manager.

- `FasterWhisperEngine`: CTranslate2 (int8 on CPU, float16/int8_float16 on CUDA 12), Silero VAD,
  word timestamps with probabilities. The default wherever CTranslate2 can run.
- `TransformersWhisperEngine`: transformers Whisper in fp16 with SDPA. Greedy decoding goes
  through `tabs.whisper.fastdecode`: voice-detected windows of up to 30 s in batches sized from
  the VRAM budget, a static KV cache and the decode step replayed as a CUDA graph, word times
  from cross-attention DTW. Beam search goes through transformers' ``generate()``. For GPUs
  where CTranslate2's CUDA 12 build cannot run (a CUDA 13-only machine).

`choose_engine` picks one and says why; the tab shows that line.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tabs.whisper.audio import SAMPLE_RATE
from tabs.whisper.config import MODEL_SIZES, TranscribeConfig
from tabs.whisper.transcript import Segment, Word

Progress = Callable[[float, float], None]  # (seconds done, seconds total)

# Rough fp16 weight sizes, used only as the manager's first-load hint.
_SIZE_BYTES = {"tiny": 80e6, "base": 150e6, "small": 500e6, "medium": 1.6e9, "large": 3.2e9,
               "turbo": 1.7e9, "distil": 1.5e9}
# what the transformers engine loads for a size name that is not openai/whisper-<size>
HUB_IDS = {"distil-large-v3": "distil-whisper/distil-large-v3"}
FAST_PATH = "static-cache decoder with CUDA graphs"


@dataclass
class EngineResult:
    """Raw engine output: timed words (if asked) and the engine's own segments."""

    words: list[Word]
    segments: list[Segment]
    language: str
    duration: float
    stopped_at: float | None = None  # seconds reached when Stop was pressed
    notes: list[str] = field(default_factory=list)


def estimate_bytes(model: str) -> int:
    name = Path(model).name.lower()
    for key in ("turbo", "distil", "large", "medium", "small", "base", "tiny"):
        if key in name:
            return int(_SIZE_BYTES[key])
    return int(_SIZE_BYTES["small"])


def model_format(model: str) -> str:
    """``ct2`` (CTranslate2 folder), ``hf`` (transformers folder) or ``size`` (hub name)."""
    p = Path(model)
    if p.is_dir():
        if (p / "model.bin").exists():
            return "ct2"
        cfg = p / "config.json"
        if cfg.exists() and json.loads(cfg.read_text()).get("model_type") == "whisper":
            return "hf"
        raise ValueError(f"{model} is neither a CTranslate2 Whisper folder (model.bin) nor a "
                         "transformers Whisper folder (config.json with model_type whisper)")
    if model in MODEL_SIZES or "/" in model:
        return "size"
    raise ValueError(f"unknown Whisper model {model!r}: use a size ({', '.join(MODEL_SIZES)}),"
                     " a hub id or a local folder")


def faster_whisper_missing() -> str | None:
    """Why faster-whisper cannot run at all here (not installed), or None."""
    import importlib.util

    for mod in ("faster_whisper", "ctranslate2"):
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):  # a broken install counts as missing
            found = False
        if not found:
            return f"{mod.replace('_', '-')} is not installed"
    return None


def ctranslate2_cuda_problem() -> str | None:
    """Why CTranslate2 cannot use the GPU here, or None when it can."""
    import ctypes

    missing = faster_whisper_missing()
    if missing:
        return missing
    import ctranslate2

    if ctranslate2.get_cuda_device_count() == 0:
        return "CTranslate2 sees no CUDA device"
    for lib in ("libcublas.so.12", "cublas64_12.dll"):
        try:
            ctypes.CDLL(lib)
            return None
        except OSError:
            continue
    try:  # pip's nvidia-cublas-cu12 wheel
        import nvidia.cublas  # noqa: F401

        return None
    except ImportError:
        return "CTranslate2 links CUDA 12 cuBLAS, which this machine lacks"


def choose_engine(requested: str, device: str, model: str) -> tuple[str, str]:
    """(engine name, one line saying why) for this device and model."""
    fmt = model_format(model)
    if requested != "auto":
        if requested == "transformers" and fmt == "ct2":
            raise ValueError("the transformers engine needs a transformers Whisper folder or a "
                             "hub size; this folder is a CTranslate2 model")
        if requested == "faster-whisper" and fmt == "hf":
            raise ValueError("faster-whisper needs a CTranslate2 folder or a size name; this "
                             "folder is a transformers model")
        if requested == "faster-whisper" and faster_whisper_missing():
            raise ValueError(f"{faster_whisper_missing()}: pip install faster-whisper, or "
                             "choose the transformers engine")
        return requested, f"{requested} (chosen by you)"
    if fmt == "hf":
        return "transformers", "transformers (the model is a transformers folder)"
    missing = faster_whisper_missing()
    if missing and fmt == "ct2":
        raise ValueError(f"this folder is a CTranslate2 model, but {missing}: pip install "
                         "faster-whisper, or use a transformers Whisper folder or size name")
    if missing:
        where = (f"fp16 + SDPA on the GPU, {FAST_PATH}" if device == "cuda"
                 else "on the CPU")
        return "transformers", f"transformers {where} ({missing})"
    if device == "cuda":
        problem = ctranslate2_cuda_problem()
        if problem and fmt == "ct2":
            return "faster-whisper", f"faster-whisper on CPU ({problem}; model is CTranslate2)"
        if problem:
            return "transformers", f"transformers fp16 + SDPA on the GPU, {FAST_PATH} ({problem})"
        return "faster-whisper", "faster-whisper on the GPU (CTranslate2 CUDA)"
    return "faster-whisper", "faster-whisper int8 on the CPU"


class FasterWhisperEngine:
    name = "faster-whisper"

    def __init__(self, studio: Any, model: str, compute_type: str = "int8",
                 device: str | None = None):
        self.studio = studio
        self.model = model
        self.device = device or studio.device
        if self.device == "cuda" and ctranslate2_cuda_problem():
            self.device = "cpu"
        self.compute_type = self._supported(compute_type)
        self.key = f"whisper:ct2:{model}:{self.device}:{self.compute_type}"

    def _supported(self, compute_type: str) -> str:
        import ctranslate2

        types = ctranslate2.get_supported_compute_types(self.device)
        if compute_type in types:
            return compute_type
        return "int8" if "int8" in types else "float32"

    def _load(self, device: str) -> Any:
        from faster_whisper import WhisperModel

        offline = bool(getattr(self.studio.settings, "offline", False))
        try:
            return WhisperModel(self.model, device=self.device, compute_type=self.compute_type,
                                local_files_only=offline,
                                download_root=str(Path(self.studio.settings.cache_dir)
                                                  / "whisper"))
        except Exception as e:  # hub/cache errors come in many types; say what to do
            raise ValueError(_load_failure(self.model, offline, e)) from None

    def register(self) -> str:
        from studio.models import ModelSpec

        def make() -> ModelSpec:
            est = estimate_bytes(self.model) // (2 if "int8" in self.compute_type else 1)
            return ModelSpec(
                key=self.key, load=self._load, title=f"Whisper {Path(self.model).name} "
                f"({self.compute_type}, CTranslate2)", estimate=est if self.device == "cuda"
                else 0, reserve=est // 4 if self.device == "cuda" else 0)

        return self.studio.models.ensure(self.key, make)

    def transcribe(self, audio: np.ndarray, cfg: TranscribeConfig,
                   progress: Progress | None = None,
                   stop: threading.Event | None = None,
                   on_segment: Callable[[Segment], None] | None = None) -> EngineResult:
        """`on_segment(segment)` sees each segment as soon as it is decoded (the tab shows it)."""
        duration = len(audio) / SAMPLE_RATE
        with self.studio.models.use(self.register()) as wm:
            if not wm.model.is_multilingual and cfg.language not in (None, "en"):
                raise ValueError(f"{Path(self.model).name} is an English-only model; it "
                                 f"cannot transcribe language {cfg.language!r}")
            segments, info = wm.transcribe(
                audio, language=cfg.language, beam_size=cfg.beam_size,
                initial_prompt=cfg.initial_prompt or None, hotwords=cfg.hotwords or None,
                vad_filter=cfg.vad, word_timestamps=cfg.word_timestamps,
                condition_on_previous_text=False)
            res = EngineResult([], [], info.language, duration)
            for s in segments:  # a generator: decoding happens while we iterate
                words = [Word(w.start, w.end, w.word, round(w.probability, 4))
                         for w in (s.words or [])]
                res.words += words
                conf = (round(sum(w.probability for w in words) / len(words), 4) if words
                        else round(float(np.exp(s.avg_logprob)), 4))
                res.segments.append(Segment(s.start, s.end, s.text.strip(), None, words, conf))
                if on_segment is not None:
                    on_segment(res.segments[-1])
                if progress:
                    progress(min(s.end, duration), duration)
                if stop is not None and stop.is_set():
                    res.stopped_at = s.end
                    break
        return res


def _load_failure(model: str, offline: bool, e: Exception) -> str:
    if offline and not Path(model).exists():
        return (f"Whisper {model} is not on this machine and the studio runs offline: pick a "
                "model that is (the small profile ships tiny.en), give a local model folder, or "
                "start the studio without --offline to download it")
    return f"could not load Whisper {model} ({type(e).__name__}: {str(e)[:300]})"


def hub_id(model: str) -> str:
    """A size name to the openai/whisper-* repository the transformers engine loads."""
    if "/" in model or Path(model).is_dir():
        return model
    return HUB_IDS.get(model, f"openai/whisper-{model}")


@dataclass
class LoadedWhisper:
    """What the manager holds for the transformers engine: the model, its processor, the
    static-cache decoder (built on first use, sized to the batch) and, for beam search only,
    transformers' ASR pipeline over the same model."""

    model: Any
    tokenizer: Any
    feature_extractor: Any
    device: Any
    dtype: Any
    decoder: Any = None
    _pipe: Any = None

    @property
    def pipe(self) -> Any:
        if self._pipe is None:
            from transformers import pipeline

            self._pipe = pipeline("automatic-speech-recognition", model=self.model,
                                  tokenizer=self.tokenizer,
                                  feature_extractor=self.feature_extractor,
                                  device=self.device, dtype=self.dtype)
        return self._pipe

    def static_decoder(self, batch: int, max_len: int) -> Any:
        from tabs.whisper.fastdecode import WhisperStaticDecoder

        d = self.decoder
        if d is None or d.max_batch < batch or d.max_len != max_len:
            self.decoder = None  # free the old buffers (and graphs) before the new ones
            d = self.decoder = WhisperStaticDecoder(self.model, batch, max_len)
        return d


class TransformersWhisperEngine:
    name = "transformers"
    # VRAM kept free for a pyannote pipeline that runs in the same transcription
    DIARIZATION_ALLOWANCE = int(1e9)

    def __init__(self, studio: Any, model: str, device: str | None = None):
        self.studio = studio
        self.model = hub_id(model)
        self.device = device or studio.device
        self.key = f"whisper:hf:{self.model}:{self.device}"
        self.last_batch: int | None = None  # windows per batch of the last run (benchmarks)

    def _load(self, device: str) -> Any:
        import torch
        from transformers import AutoProcessor, WhisperForConditionalGeneration

        dtype = torch.float16 if self.device == "cuda" else torch.float32
        offline = bool(getattr(self.studio.settings, "offline", False))
        try:
            model = WhisperForConditionalGeneration.from_pretrained(
                self.model, dtype=dtype, attn_implementation="sdpa", local_files_only=offline)
            proc = AutoProcessor.from_pretrained(self.model, local_files_only=offline)
        except (OSError, ValueError) as e:  # not cached offline, or not a Whisper folder
            raise ValueError(_load_failure(self.model, offline, e)) from None
        keep_encoder_on_sdpa(model)
        return LoadedWhisper(model.to(self.device).eval(), proc.tokenizer,
                             proc.feature_extractor, torch.device(self.device), dtype)

    def register(self) -> str:
        from studio.models import ModelSpec

        def make() -> ModelSpec:
            est = estimate_bytes(self.model)
            return ModelSpec(
                key=self.key, load=self._load, title=f"Whisper {Path(self.model).name} "
                "(transformers)", estimate=est if self.device == "cuda" else 0,
                reserve=est // 2 if self.device == "cuda" else 0)

        return self.studio.models.ensure(self.key, make)

    def transcribe(self, audio: np.ndarray, cfg: TranscribeConfig,
                   progress: Progress | None = None,
                   stop: threading.Event | None = None,
                   on_segment: Callable[[Segment], None] | None = None) -> EngineResult:
        """Greedy (beam 1): voice-detected windows of up to 30 s, batched, through the
        static-cache decoder (CUDA graphs on the GPU); `on_segment` gets each window's words as
        a segment when its batch is done. Beam search: transformers' pipeline."""
        with self.studio.models.use(self.register()) as lw:
            language = self._check_language(lw, cfg)
            if cfg.beam_size > 1:
                return self._transcribe_generate(lw, audio, cfg, language, progress, stop)
            return self._transcribe_static(lw, audio, cfg, language, progress, stop,
                                           on_segment)

    def _check_language(self, lw: LoadedWhisper, cfg: TranscribeConfig) -> str | None:
        g = lw.model.generation_config
        multilingual = getattr(g, "is_multilingual", False)
        if cfg.language and multilingual:
            if f"<|{cfg.language}|>" not in (getattr(g, "lang_to_id", None) or {}):
                raise ValueError(f"{Path(self.model).name} has no language {cfg.language!r}: "
                                 "give a Whisper language code such as en, de or fr")
            return cfg.language
        if cfg.language not in (None, "en"):
            raise ValueError(f"{Path(self.model).name} is an English-only model; it "
                             f"cannot transcribe language {cfg.language!r}")
        return None

    # ----- the fast path --------------------------------------------------------------------
    def batch_size(self, lw: LoadedWhisper, cfg: TranscribeConfig, max_len: int,
                   n_align: int, max_new: int) -> int:
        """Windows per batch: the config's, fewer when the VRAM budget (less what pyannote
        needs when it runs in the same transcription) cannot hold them."""
        from tabs.whisper.fastdecode import window_bytes

        want = max(1, cfg.batch_size)
        if self.device != "cuda":
            return want
        models = self.studio.models
        free = models.budget - models.used() - (self.DIARIZATION_ALLOWANCE if cfg.diarize
                                                else 0)
        have = lw.decoder.nbytes() if lw.decoder is not None else 0
        per = window_bytes(lw.model, max_len, n_align, max_new)
        return max(1, min(want, (free + have) // per))

    def prompt(self, lw: LoadedWhisper, cfg: TranscribeConfig, lang_token: int | None
               ) -> list[int]:
        g = lw.model.generation_config
        ids = [g.decoder_start_token_id]
        if getattr(g, "is_multilingual", False):
            ids += [lang_token if lang_token is not None else g.lang_to_id["<|en|>"],
                    g.task_to_id["transcribe"]]
        ids.append(g.no_timestamps_token_id)
        if cfg.initial_prompt:
            prev = lw.tokenizer.get_prompt_ids(cfg.initial_prompt)
            ids = [int(x) for x in prev] + ids
        return ids

    @staticmethod
    def suppressed(lw: LoadedWhisper) -> tuple[list[int], list[int]]:
        """(every step, first step): the generation config's lists plus, since these windows
        decode without timestamps, the special tokens after <|endoftext|> and every timestamp
        token (none of them is text)."""
        g = lw.model.generation_config
        eos = g.eos_token_id if isinstance(g.eos_token_id, int) else g.eos_token_id[0]
        vocab = lw.model.config.vocab_size
        every = set(g.suppress_tokens or []) | set(range(eos + 1, vocab))
        return sorted(every), list(g.begin_suppress_tokens or [])

    def _transcribe_static(self, lw: LoadedWhisper, audio: np.ndarray, cfg: TranscribeConfig,
                           language: str | None, progress: Progress | None,
                           stop: threading.Event | None,
                           on_segment: Callable[[Segment], None] | None = None
                           ) -> EngineResult:
        from tabs.whisper.fastdecode import speech_windows

        duration = len(audio) / SAMPLE_RATE
        res = EngineResult([], [], language or "", duration)
        if cfg.hotwords:
            res.notes.append("the transformers engine has no hotwords; they were skipped")
        windows, vad_note = speech_windows(audio, cfg.vad)
        if vad_note:
            res.notes.append(vad_note)
        g = lw.model.generation_config
        multilingual = getattr(g, "is_multilingual", False)
        base_prompt = self.prompt(lw, cfg, None)
        limit = lw.model.config.max_target_positions
        max_new = min(int(getattr(g, "max_new_tokens", None) or limit), limit - len(base_prompt))
        min_new = int(getattr(g, "min_new_tokens", None) or 0)
        max_len = min(limit, len(base_prompt) + max_new)
        n_align = len(getattr(g, "alignment_heads", None) or [])
        b = self.batch_size(lw, cfg, max_len, n_align or lw.model.config.decoder_attention_heads,
                            max_new)
        self.last_batch = b
        dec = lw.static_decoder(b, max_len)
        every, first = self.suppressed(lw)
        lang_ids = list(g.lang_to_id.values()) if multilingual and not language else []
        id_to_lang = {v: k.strip("<|>") for k, v in getattr(g, "lang_to_id", {}).items()}
        seen_langs: list[str] = []
        how = " with CUDA graphs" if dec.use_cuda_graphs else ""
        res.notes.append(f"greedy static-cache decoder{how}, {len(windows)} window(s) in "
                         f"batches of {b}")
        for k in range(0, len(windows), b):
            part = windows[k:k + b]
            clips = [audio[s:e] for s, e in part]
            feats = lw.feature_extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt",
                                         return_attention_mask=True,
                                         device=str(lw.device))
            frames = feats["attention_mask"].sum(-1).tolist()
            features = feats["input_features"]
            if lang_ids:
                dec.encode(features)
                toks = dec.detect_language(len(part), g.decoder_start_token_id, lang_ids)
                prompts = [self.prompt(lw, cfg, t) for t in toks]
                seen_langs += [id_to_lang[t] for t in toks]
            else:
                lang = g.lang_to_id[f"<|{language}|>"] if multilingual and language else None
                prompts = [self.prompt(lw, cfg, lang)] * len(part)
            out = dec.decode(features, prompts, max_new_tokens=max_new, min_new_tokens=min_new,
                             suppress=every, begin_suppress=first, num_frames=frames,
                             word_times=True, encoded=bool(lang_ids))
            for j, ((s, e), w) in enumerate(zip(part, out, strict=True)):
                lang = language or (seen_langs[-len(part) + j] if seen_langs else "en")
                words = self._words(lw, w, s / SAMPLE_RATE, e / SAMPLE_RATE, lang, res)
                if on_segment is not None and words:
                    conf = round(sum(x.probability for x in words) / len(words), 4)
                    on_segment(Segment(words[0].start, words[-1].end,
                                       "".join(x.text for x in words).strip(), None, words,
                                       conf))
            done = part[-1][1] / SAMPLE_RATE
            if progress:
                progress(min(done, duration), duration)
            if stop is not None and stop.is_set() and k + b < len(windows):
                res.stopped_at = done
                break
        if seen_langs:
            res.language = max(set(seen_langs), key=seen_langs.count)
        elif not res.language:
            res.language = "en"
        return res

    @staticmethod
    def _words(lw: LoadedWhisper, w: Any, offset: float, end: float, language: str,
               res: EngineResult) -> list[Word]:
        """Group a window's tokens into words (transformers' own grouping) with times; they
        are appended to `res.words` and returned."""
        from transformers.models.whisper.tokenization_whisper import _combine_tokens_into_words

        eos = lw.tokenizer.eos_token_id
        keep = [i for i, t in enumerate(w.tokens) if t < eos]
        if not keep:
            return []
        tokens = [w.tokens[i] for i in keep]
        times = [w.times[i] for i in keep]
        probs = [w.probs[i] for i in keep]
        words, _, indices = _combine_tokens_into_words(lw.tokenizer, tokens, language)
        added: list[Word] = []
        for text, idx in zip(words, indices, strict=True):
            if not idx or not text.strip():
                continue
            t0 = min(offset + times[idx[0]][0], end)
            t1 = min(offset + times[idx[-1]][1], end)
            p = round(float(sum(probs[i] for i in idx) / len(idx)), 4)
            added.append(Word(round(t0, 3), round(max(t0, t1), 3),
                              text if text.startswith(" ") else " " + text, p))
        res.words += added
        return added

    # ----- beam search: transformers' pipeline -------------------------------------------------
    def _transcribe_generate(self, lw: LoadedWhisper, audio: np.ndarray,
                             cfg: TranscribeConfig, language: str | None,
                             progress: Progress | None,
                             stop: threading.Event | None) -> EngineResult:
        """Windows of `batch_size` x 30 s go through the pipeline one at a time, so Stop and
        progress work between windows; inside a window the chunks run as one batch. The static
        decoder's buffers are freed first: beam search needs that memory."""
        lw.decoder = None
        pipe = lw.pipe
        duration = len(audio) / SAMPLE_RATE
        window = cfg.batch_size * 30 * SAMPLE_RATE
        res = EngineResult([], [], cfg.language or "", duration)
        res.notes.append(f"beam {cfg.beam_size}: transformers generate() (the static-cache "
                         "decoder is greedy; beam 1 is the fast path)")
        if cfg.vad or cfg.hotwords:
            res.notes.append("beam search on the transformers engine has no VAD or hotwords; "
                             "they were skipped")
        gen: dict[str, Any] = {"num_beams": cfg.beam_size, "task": "transcribe"}
        multilingual = getattr(pipe.model.generation_config, "is_multilingual", False)
        if language:
            gen["language"] = language
        if not multilingual:
            gen.pop("task")
        if cfg.initial_prompt:
            gen["prompt_ids"] = pipe.tokenizer.get_prompt_ids(
                cfg.initial_prompt, return_tensors="pt").to(pipe.device)
        for start in range(0, len(audio), window):
            if pipe.model.model.encoder.config is not pipe.model.config:
                # undo the eager switch of an earlier word-timestamp run; generate makes it
                # again for the decoder when this run asks for word timestamps
                pipe.model.config._attn_implementation = "sdpa"
            part = audio[start:start + window]
            offset = start / SAMPLE_RATE
            out = pipe({"raw": part, "sampling_rate": SAMPLE_RATE}, chunk_length_s=30,
                       batch_size=cfg.batch_size, generate_kwargs=gen,
                       return_timestamps="word" if cfg.word_timestamps else True)
            self._collect(out.get("chunks") or [], offset, cfg.word_timestamps,
                          offset + len(part) / SAMPLE_RATE, res)
            done = min(duration, offset + len(part) / SAMPLE_RATE)
            if progress:
                progress(done, duration)
            if stop is not None and stop.is_set() and done < duration:
                res.stopped_at = done
                break
        return res

    @staticmethod
    def _collect(chunks: list[dict], offset: float, words: bool, end_of_window: float,
                 res: EngineResult) -> None:
        for c in chunks:
            t0, t1 = c["timestamp"]
            # a chunk may claim times past the audio (padding of the last 30 s window)
            t0 = min(offset + (t0 or 0.0), end_of_window)
            t1 = min(offset + t1, end_of_window) if t1 is not None else end_of_window
            text = c["text"]
            if words:
                res.words.append(Word(t0, t1, text if text.startswith(" ") else " " + text))
            elif text.strip():
                res.segments.append(Segment(t0, t1, text.strip()))
        if words:
            res.segments = []


def keep_encoder_on_sdpa(model: Any) -> None:
    """transformers turns the whole Whisper model to eager attention for word timestamps (the
    decoder's cross-attention weights are read for alignment) and leaves it so. The encoder (1500
    frames of self-attention in every layer: most of the compute and, in eager, a 1500 x 1500
    matrix per head) never needs those weights, so its layers get a config of their own that
    stays on SDPA."""
    import copy

    shared = model.config
    if shared._attn_implementation != "sdpa":
        return
    own = copy.copy(shared)
    for module in model.model.encoder.modules():
        if getattr(module, "config", None) is shared:
            module.config = own


def attention_in_use(model: Any) -> dict[str, str]:
    """Which attention the encoder and the decoder run now (shown in the benchmark)."""
    return {"encoder": model.model.encoder.layers[0].self_attn.config._attn_implementation,
            "decoder": model.model.decoder.layers[0].self_attn.config._attn_implementation}


def make_engine(name: str, studio: Any, cfg: TranscribeConfig, model: str) -> Any:
    if name == "transformers":
        return TransformersWhisperEngine(studio, model)
    return FasterWhisperEngine(studio, model, cfg.compute_type)
