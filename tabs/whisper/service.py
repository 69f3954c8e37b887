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
from tabs.whisper.postedit import Edit, apply_edits, propose_edits
from tabs.whisper.speakers import Turn, assign_speakers, label_segments, merge_words
from tabs.whisper.transcript import Transcript

StageProgress = Callable[[float, str], None]  # (fraction 0..1, what is happening)
NO_DIARIZATION = ("no diarization weights: pyannote's pipeline is not available offline; give a"
                  " hub token or a local pipeline folder to get speakers")


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

    def engine_for(self, cfg: TranscribeConfig) -> tuple[Any, str]:
        model = cfg.model.strip() or self.default_model()
        name, why = choose_engine(cfg.engine, self.studio.device, model)
        return make_engine(name, self.studio, cfg, model), why

    # ----- transcription ---------------------------------------------------------------------
    def transcribe(self, path: str | Path, cfg: TranscribeConfig,
                   progress: StageProgress | None = None, stop: threading.Event | None = None,
                   hf_token: str = "", diarization_source: str = "",
                   diarizer: Any = None) -> Transcript:
        """Decode, transcribe, diarize, assign speakers and save. `diarizer` (anything with
        ``diarize(audio, num, min, max) -> list[Turn]``) replaces the pyannote one in tests."""
        cfg.validate()
        report = progress or (lambda f, m: None)
        report(0.0, "decoding audio")
        audio = load_audio(path)
        engine, why = self.engine_for(cfg)
        t0 = time.perf_counter()

        def asr_progress(done: float, total: float) -> None:
            report(0.05 + 0.75 * done / max(total, 1e-6),
                   f"transcribing {formats.clock(done)} / {formats.clock(total)}")

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
        if cfg.diarize and not (stop is not None and stop.is_set()):
            report(0.82, "finding speakers")
            turns, note = self._diarize(heard, cfg, hf_token, diarization_source, diarizer)
            if note:
                notes.append(note)
        t = self._build(res, turns, cfg)
        t.engine, t.model, t.notes = engine.name, engine.model, notes
        t.source = Path(path).name
        t.id = self.new_id()
        save_recording(audio, self.root / t.id)  # the whole recording, to play from any segment
        t.notes.append(f"real-time factor {t.duration / max(asr_seconds, 1e-6):.1f}x "
                       "(audio seconds per second of transcription)")
        report(1.0, "done")
        return t

    def _diarize(self, audio: Any, cfg: TranscribeConfig, token: str, source: str,
                 diarizer: Any) -> tuple[list[Turn] | None, str]:
        if diarizer is None:
            src = self.diarization_source(source)
            if not src:
                return None, NO_DIARIZATION
            from studio.hub import TokenStore  # the Models tab's token when none is typed

            diarizer = PyannoteDiarizer(self.studio, src,
                                        token or TokenStore(self.studio.settings.home).get())
        try:
            turns = diarizer.diarize(audio, cfg.num_speakers, cfg.min_speakers,
                                     cfg.max_speakers)
        except DiarizationUnavailable as e:
            return None, f"no speakers: {e}"
        if not turns:
            return [], "the diarization found no speech turns; transcript without speakers"
        return turns, f"{len({t.speaker for t in turns})} speaker(s) found"

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
    def propose(self, transcript_id: str, glossary: list[str], engine: Any = None,
                stop: threading.Event | None = None) -> list[Edit]:
        """Ask the LLM for corrections; they wait in `_proposals` until `accept`."""
        t = self.get(transcript_id)
        edits = propose_edits(t, engine or self.llm(), glossary, stop=stop)
        self._proposals[transcript_id] = edits
        return edits

    def accept(self, transcript_id: str) -> Transcript:
        edits = self._proposals.pop(transcript_id, None)
        if edits is None:
            raise ValueError("no post-edit proposal to accept for this transcript")
        with self._lock:
            t = apply_edits(self.get(transcript_id), edits)
            t.notes.append(f"LLM post-edit applied to {len(edits)} segment(s)")
            self.save(t, transcript_id)
        return t
