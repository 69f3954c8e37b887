"""WhisperService: audio file -> speaker-labelled `Transcript`, renames, exports, post-edits.

One per Studio (``studio.extras["whisper"]``). Transcripts are saved under
``exports_dir/whisper/<id>/`` so a script can rename, export or play them by id later; the
decoded recording is kept there too (``audio.wav``), so a click on a segment plays from it.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tabs.whisper import formats
from tabs.whisper.audio import AudioError, load_audio
from tabs.whisper.config import TranscribeConfig
from tabs.whisper.diarization import DiarizationUnavailable, PyannoteDiarizer
from tabs.whisper.engines import EngineResult, choose_engine, make_engine
from tabs.whisper.playback import AUDIO_FILE, cut_from, save_recording
from tabs.whisper.postedit import (
    Edit,
    apply_edits,
    combine,
    glossary_edits,
    propose_edits,
    too_small,
)
from tabs.whisper.speakers import Turn, assign_speakers, label_segments, merge_words
from tabs.whisper.transcript import Transcript

StageProgress = Callable[[float, str], None]  # (fraction 0..1, what is happening)
NO_DIARIZATION = ("no diarization weights: pyannote's pipeline is not available offline; give a"
                  " hub token or a local pipeline folder to get speakers")
WEAK = "weak"  # Transcript.diarizer of the offline fallback


def get_service(studio: Any) -> WhisperService:
    return studio.service("whisper", WhisperService)


class WhisperService:
    def __init__(self, studio: Any):
        self.studio = studio
        self.root = Path(studio.settings.exports_dir) / "whisper"
        self.root.mkdir(parents=True, exist_ok=True)
        self._proposals: dict[str, list[Edit]] = {}
        self._lock = threading.Lock()
        self._llm: Any = None
        self._weak: Any = None  # the offline d-vector fallback, built on first use

    def llm(self) -> Any:
        """The shared chat engine (profile role 'chat'), built on first use."""
        if self._llm is None:
            from studio.llm import LLMEngine

            self._llm = LLMEngine.from_choice(self.studio, self.studio.choices["chat"])
        return self._llm

    # ----- models --------------------------------------------------------------------------
    def default_model(self) -> str:
        choice = self.studio.choices.get("whisper")
        if choice is None or not choice.source:
            raise ValueError("no Whisper model in this profile: choose a size or a local "
                             "folder" + (f" ({choice.note})" if choice and choice.note else ""))
        return choice.source

    def diarization_source(self, override: str = "") -> str | None:
        if override.strip():
            return override.strip()
        choice = self.studio.choices.get("diarization")
        return choice.source if choice else None

    def diarization_method(self, override: str = "") -> str:
        """What "Find speakers" will use: 'pyannote', 'weak' (the offline d-vector fallback)
        or '' (nothing can find speakers here)."""
        if self.diarization_source(override):
            return "pyannote"
        from tabs.whisper import dvector

        return WEAK if dvector.available() else ""

    def engine_for(self, cfg: TranscribeConfig) -> tuple[Any, str]:
        model = cfg.model.strip() or self.default_model()
        name, why = choose_engine(cfg.engine, self.studio.device, model)
        return make_engine(name, self.studio, cfg, self.local_model(model, name)), why

    def local_model(self, model: str, engine: str) -> str:
        """The folder to load for `model`: a local folder as it is; a size name or hub id only
        when it is on disk (the Models tab downloads it), else `studio.hub.NotOnDisk` saying
        so. A request never starts a download."""
        from studio import hub

        if Path(model).exists():
            return model
        if "/" in model:
            repo, what = model, f"Whisper {model}"
        elif engine == "transformers":
            from tabs.whisper.engines import hub_id

            repo, what = hub_id(model), f"Whisper {model}"
        else:
            repo, what = whisper_repo(model) or model, f"Whisper {model}"
        whisper_cache = hub.studio_cache_dirs(self.studio.settings)["whisper"]
        found = hub.local_path(self.studio.settings.home, repo, whisper_cache)
        if found is not None:
            return str(found)
        return hub.require_local(self.studio, repo, what)  # the hub cache, or NotOnDisk

    # ----- transcription ---------------------------------------------------------------------
    def transcribe(self, path: str | Path, cfg: TranscribeConfig,
                   progress: StageProgress | None = None, stop: threading.Event | None = None,
                   hf_token: str = "", diarization_source: str = "",
                   diarizer: Any = None, on_segment: Callable[[Any], None] | None = None
                   ) -> Transcript:
        """Decode, transcribe, diarize, assign speakers and save. `diarizer` (anything with
        ``diarize(audio, num, min, max) -> list[Turn]``) replaces the pyannote one in tests.
        `on_segment(segment)` is called with each segment as the engine decodes it (before
        speakers are known), for a view that fills as the transcription runs."""
        cfg.validate()
        report = progress or (lambda f, m: None)
        report(0.0, "decoding audio")
        audio = load_audio(path)
        engine, why = self.engine_for(cfg)
        t0 = time.perf_counter()

        def asr_progress(done: float, total: float) -> None:
            report(0.05 + 0.75 * done / max(total, 1e-6),
                   f"transcribing {formats.clock(done)} / {formats.clock(total)}")

        # On a GPU the speaker search runs beside the transcription (the engine sized its
        # batches leaving diarization's share of the budget); on a CPU they would only fight
        # over the same cores, so it runs after.
        beside = None
        if cfg.diarize and self.diarize_beside_asr():
            beside = _Background(lambda: self._diarize(audio, cfg, hf_token, diarization_source,
                                                       diarizer))
        if on_segment is not None and _accepts(engine.transcribe, "on_segment"):
            res = engine.transcribe(audio, cfg, asr_progress, stop, on_segment=on_segment)
        else:
            res = engine.transcribe(audio, cfg, asr_progress, stop)
        asr_seconds = time.perf_counter() - t0
        if not res.words and not res.segments:
            raise AudioError(f"no speech found in {Path(path).name}"
                             + (" (voice detection found none)" if cfg.vad else ""))
        notes = [f"engine: {why}", *res.notes]
        heard = audio  # what the transcript covers: all of it, or up to the Stop
        if res.stopped_at is not None:
            notes.append(f"stopped at {formats.clock(res.stopped_at)}: partial transcript")
            heard = audio[: int(res.stopped_at * 16000) + 16000]
        turns: list[Turn] | None = None
        method = ""
        if beside is not None:
            report(0.82, "finding speakers (started with the transcription)")
            turns, note, method = beside.result()
            if turns and res.stopped_at is not None:  # only what the partial transcript covers
                end = len(heard) / 16000
                turns = [Turn(t.start, min(t.end, end), t.speaker) for t in turns
                         if t.start < end]
            if note:
                notes.append(note)
        elif cfg.diarize and not (stop is not None and stop.is_set()):
            report(0.82, "finding speakers")
            turns, note, method = self._diarize(heard, cfg, hf_token, diarization_source,
                                                diarizer)
            if note:
                notes.append(note)
        t = self._build(res, turns, cfg)
        t.engine, t.notes = engine.name, notes
        t.model = model_title(cfg.model, self.studio.choices.get("whisper"))
        t.diarizer = method if turns else ""
        t.source = Path(path).name
        t.id = self.new_id()
        save_recording(audio, self.root / t.id)  # the whole recording, to play from any segment
        t.notes.append(f"real-time factor {t.duration / max(asr_seconds, 1e-6):.1f}x "
                       "(audio seconds per second of transcription)")
        report(1.0, "done")
        return t

    def diarize_beside_asr(self) -> bool:
        """Whether speakers are searched while the transcription runs: on a GPU only."""
        return getattr(self.studio.probe, "device", "cpu") == "cuda"

    def weak_diarizer(self) -> Any:
        if self._weak is None:
            from tabs.whisper.dvector import DVectorDiarizer

            self._weak = DVectorDiarizer(self.studio)
        return self._weak

    def _diarize(self, audio: Any, cfg: TranscribeConfig, token: str, source: str,
                 diarizer: Any) -> tuple[list[Turn] | None, str, str]:
        """(turns, note, method): method is 'pyannote', 'weak' or '' (none ran)."""
        method = "pyannote"
        if diarizer is None:
            src = self.diarization_source(source)
            if src:
                from studio.hub import TokenStore  # the Models tab's token when none is typed

                diarizer = PyannoteDiarizer(self.studio, src,
                                            token or TokenStore(self.studio.settings.home).get())
        try:
            if diarizer is not None:
                turns = diarizer.diarize(audio, cfg.num_speakers, cfg.min_speakers,
                                         cfg.max_speakers)
            else:
                raise DiarizationUnavailable(NO_DIARIZATION)
        except DiarizationUnavailable as e:
            from tabs.whisper import dvector

            # a pipeline the user chose that fails is said, not swapped for the weak fallback
            if diarizer is not None:
                return None, f"no speakers: {e}", ""
            if not dvector.available():
                return None, NO_DIARIZATION, ""
            method = WEAK
            turns = self.weak_diarizer().diarize(audio, cfg.num_speakers, cfg.min_speakers,
                                                 cfg.max_speakers)
        if not turns:
            return [], "the diarization found no speech turns; transcript without speakers", method
        n = len({t.speaker for t in turns})
        if method == WEAK:
            from tabs.whisper.dvector import TITLE

            return turns, (f"{n} speaker(s) found by the {TITLE}: it tells clearly "
                           "different voices apart but errs on short turns, overlap and similar "
                           "voices; a pyannote pipeline (Models tab) is much better"), method
        return turns, f"{n} speaker(s) found", method

    @staticmethod
    def _build(res: EngineResult, turns: list[Turn] | None, cfg: TranscribeConfig) -> Transcript:
        if res.words:
            words = assign_speakers(res.words, turns) if turns else res.words
            segments = merge_words(words)
        else:
            segments = label_segments(res.segments, turns) if turns else res.segments
        return Transcript(segments=segments, language=res.language, duration=res.duration)

    # ----- storage ---------------------------------------------------------------------------
    @staticmethod
    def new_id() -> str:
        return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)

    def save(self, t: Transcript, transcript_id: str | None = None) -> str:
        tid = transcript_id or t.id or self.new_id()
        t.id = tid
        t.save(self.root / tid / "transcript.json")
        return tid

    def get(self, transcript_id: str) -> Transcript:
        path = self.root / Path(transcript_id).name / "transcript.json"
        if not transcript_id or not path.exists():
            raise ValueError(f"no transcript {transcript_id!r}; transcribe a file first")
        return Transcript.load(path)

    def rename(self, transcript_id: str, speaker: str, name: str) -> Transcript:
        with self._lock:
            t = self.get(transcript_id)
            t.rename(speaker, name)
            self.save(t, transcript_id)
        return t

    def export(self, transcript_id: str, fmt: str) -> Path:
        t = self.get(transcript_id)
        stem = Path(t.source).stem or "transcript"
        return formats.export(t, fmt, self.root / Path(transcript_id).name, stem)

    def play_from(self, transcript_id: str, index: int) -> tuple[Path, float]:
        """A short wav of the recording from segment `index`'s start, and that start."""
        t = self.get(transcript_id)
        if not 0 <= index < len(t.segments):
            raise ValueError(f"no segment {index}: this transcript has {len(t.segments)}")
        start = t.segments[index].start
        folder = self.root / Path(transcript_id).name
        return cut_from(folder / AUDIO_FILE, start, folder / "clips"), start

    # ----- post-edit -------------------------------------------------------------------------
    def llm_too_small(self) -> str:
        """Why the profile's chat model cannot help a transcript ('' when it can or is
        unknown): said before anything is loaded."""
        choice = self.studio.choices.get("chat")
        if choice is None or not choice.source:
            return ("No chat model in this profile: only the glossary fixes (no model needed) "
                    "are proposed" + (f" ({choice.note})" if choice and choice.note else ""))
        return too_small(choice.title, choice.source)

    def propose(self, transcript_id: str, glossary: list[str], engine: Any = None,
                stop: threading.Event | None = None,
                progress: StageProgress | None = None) -> tuple[list[Edit], str]:
        """Glossary fixes (no model), then the LLM's corrections on the fixed text unless the
        chat model is too small to help (`engine` replaces it in tests). The edits wait in
        `_proposals` until `accept`. Returns (edits, what was done, in words)."""
        report = progress or (lambda f, m: None)
        t = self.get(transcript_id)
        glossary = [g.strip() for g in glossary if g.strip()]
        report(0.0, "glossary fixes")
        fixed = glossary_edits(t, glossary)
        said = [f"{len(fixed)} glossary fix(es) (no model needed)"] if glossary else []
        small = "" if engine is not None else self.llm_too_small()
        llm_edits: list[Edit] = []
        if small:
            said.append(small)
        else:
            report(0.05, "loading the chat model")
            llm = engine or self.llm()

            def chunk(done: int, total: int) -> None:
                report(0.1 + 0.9 * done / max(total, 1),
                       f"LLM: chunk {min(done + 1, total)} of {total}")

            llm_edits = propose_edits(apply_edits(t, fixed), llm, glossary, stop=stop,
                                      on_chunk=chunk)
            said.append(f"{len(llm_edits)} LLM correction(s)")
        edits = combine(fixed, llm_edits)
        self._proposals[transcript_id] = edits
        report(1.0, "done")
        return edits, "; ".join(said)

    def accept(self, transcript_id: str) -> Transcript:
        edits = self._proposals.get(transcript_id)
        if edits is None:
            raise ValueError("no post-edit proposal to accept for this transcript: click "
                             "Propose corrections first")
        if not edits:
            raise ValueError("nothing to accept: the last proposal had no corrections")
        self._proposals.pop(transcript_id, None)
        with self._lock:
            t = apply_edits(self.get(transcript_id), edits)
            t.notes.append(f"post-edit applied to {len(edits)} segment(s)")
            self.save(t, transcript_id)
        return t


def _accepts(fn: Any, name: str) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def whisper_repo(size: str) -> str | None:
    """faster-whisper's hub repository for a size name ('tiny.en' -> Systran/...)."""
    try:
        from faster_whisper.utils import _MODELS

        return _MODELS.get(size)
    except ImportError:
        return None


def model_title(model: str, choice: Any = None) -> str:
    """What the page calls a Whisper model: the profile's title for its own choice ('Whisper
    tiny.en'), a size as 'Whisper large-v3', a hub snapshot or folder by its name; never a
    cache path."""
    if choice is not None and choice.source and model in ("", choice.source):
        return choice.title
    p = Path(model)
    name = p.name
    for part in reversed(p.parts):  # a hub snapshot: models--Systran--faster-whisper-x/...
        if part.startswith("models--"):
            name = part.split("--")[-1]
            break
    else:
        if name in ("model", "snapshot") and p.parent.name:
            name = p.parent.name
    for prefix in ("faster-whisper-", "faster-distil-whisper-", "whisper-"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return f"Whisper {name}" if name else "Whisper"


class _Background:
    """A call run in a thread; `result()` waits for it and re-raises what it raised."""

    def __init__(self, fn: Callable[[], Any]):
        self._out: Any = None
        self._err: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True,
                                        name="diarize-beside-asr")
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._out = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller by result()
            self._err = e

    def result(self) -> Any:
        self._thread.join()
        if self._err is not None:
            raise self._err
        return self._out
