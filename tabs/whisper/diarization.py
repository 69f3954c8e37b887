"""Speaker turns from pyannote.audio, loaded through the studio's model manager.

Real users get the community pipeline from the hub with their token (the repository is gated:
accept its terms first) or a local copy of it. No pyannote weights exist offline; then the
tab says so and the transcript simply has no speakers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tabs.whisper.audio import SAMPLE_RATE
from tabs.whisper.speakers import Turn, rename_ids


class DiarizationUnavailable(RuntimeError):
    """No diarization pipeline could be loaded; the message says what to do."""


def run_pipeline(pipeline: Any, audio: np.ndarray, num_speakers: int | None = None,
                 min_speakers: int | None = None,
                 max_speakers: int | None = None) -> list[Turn]:
    """Apply a pyannote speaker-diarization pipeline to 16 kHz mono audio -> turns with ids
    SPEAKER_00.. in order of first appearance."""
    import torch

    kwargs = {k: v for k, v in (("num_speakers", num_speakers), ("min_speakers", min_speakers),
                                ("max_speakers", max_speakers)) if v}
    if num_speakers:
        kwargs.pop("min_speakers", None)
        kwargs.pop("max_speakers", None)
    file = {"waveform": torch.from_numpy(np.ascontiguousarray(audio))[None],
            "sample_rate": SAMPLE_RATE}
    out = pipeline(file, **kwargs)
    # pyannote 4 returns DiarizeOutput; the exclusive version has no overlapping turns, which
    # is what word-level assignment wants. pyannote 3 returns the Annotation itself.
    ann = getattr(out, "exclusive_speaker_diarization", None)
    if ann is None:
        ann = getattr(out, "speaker_diarization", out)
    duration = len(audio) / SAMPLE_RATE  # the last sliding window may reach past the end
    turns = [Turn(round(seg.start, 3), round(min(seg.end, duration), 3), str(label))
             for seg, _, label in ann.itertracks(yield_label=True) if seg.start < duration]
    return rename_ids(turns)


# What a pipeline's config.yaml may build, and whose hub models pyannote may fetch for it: a
# user's YAML must not pick the class to construct or point at someone else's pickles.
PIPELINES = ("pyannote.audio.pipelines.SpeakerDiarization",
             "pyannote.audio.pipelines.speaker_diarization.SpeakerDiarization",
             "SpeakerDiarization")
HUB_ORGS = ("pyannote/",)
MODEL_KEYS = ("segmentation", "embedding", "plda", "checkpoint")
# Plain data classes inside pyannote's own checkpoints (pyannote loads them unrestricted).
PYANNOTE_GLOBALS = ("pyannote.audio.core.task.", "torch.torch_version.TorchVersion")


def check_source(source: str) -> str:
    """Refuse a diarization source that would run code: a config.yaml that names another
    class, preprocessors, or model files whose pickles hold more than pyannote checkpoints
    do; hub pipelines and models only from pyannote itself. Returns the source."""
    from studio.safety import (
        HUB_ID,
        MAX_PATH_CHARS,
        UnsafeModelFile,
        check_model_file,
        check_model_folder,
        read_yaml_file,
    )

    text = (source or "").strip()
    if len(text) > MAX_PATH_CHARS:
        raise DiarizationUnavailable(f"the diarization source is {len(text)} characters long; "
                                     "give a hub id or a folder")
    p = Path(text)
    if not p.exists():
        if HUB_ID.fullmatch(text) and text.startswith(HUB_ORGS):
            return text
        raise DiarizationUnavailable(
            f"could not load the diarization pipeline {text[:200]!r}: give a folder with a "
            "pyannote config.yaml, or a pyannote hub pipeline such as "
            "pyannote/speaker-diarization-community-1")
    config = p / "config.yaml" if p.is_dir() else p
    if not config.is_file():
        raise DiarizationUnavailable(f"{p}: no config.yaml in this folder")
    try:
        spec = read_yaml_file(config, label="diarization config.yaml")
        pipeline = spec.get("pipeline") if isinstance(spec, dict) else None
        name = pipeline.get("name") if isinstance(pipeline, dict) else None
        if name not in PIPELINES:
            raise ValueError(f"diarization config.yaml builds {str(name)[:100]!r}; only "
                             "pyannote's SpeakerDiarization pipeline is loaded")
        if spec.get("preprocessors"):
            raise ValueError("diarization config.yaml: preprocessors are not loaded (they "
                             "build any class the file names)")
        base = config.parent
        for key, value in _model_refs(pipeline.get("params") or {}):
            ref = value[len("$model/"):] if value.startswith("$model/") else value
            target = (base / ref) if not Path(ref).is_absolute() else Path(ref)
            if target.exists():
                if target.is_dir():
                    check_model_folder(target, label=f"diarization {key}",
                                       allow=PYANNOTE_GLOBALS)
                elif not (target.suffix.lower() in (".bin", ".pt", ".ckpt")
                          and _plain(target)):
                    check_model_file(target, label=f"diarization {key}")
            elif not (HUB_ID.fullmatch(value) and value.startswith(HUB_ORGS)):
                raise ValueError(f"diarization {key}: {value[:200]!r} is neither a file in the "
                                 "folder nor a pyannote hub model")
    except UnsafeModelFile as e:
        raise DiarizationUnavailable(str(e)) from None
    except ValueError as e:
        raise DiarizationUnavailable(str(e)) from None
    return text


def _plain(path: Path) -> bool:
    from studio.safety import UnsafeModelFile, weights_only_loadable

    if weights_only_loadable(path, PYANNOTE_GLOBALS):
        return True
    raise UnsafeModelFile(
        f"{path.name} is a pickle holding more than a pyannote checkpoint does; loading it can "
        "run any code it contains. Use pyannote's own files.")


def _model_refs(params: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(key, value) of the strings in a pipeline's params that name a model to load."""
    out = []
    items = params.items() if isinstance(params, dict) else []
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _model_refs(v, key + ".")
        elif isinstance(v, str) and (str(k) in MODEL_KEYS or "/" in v or v.startswith("$model")):
            out.append((key, v))
    return out


class PyannoteDiarizer:
    def __init__(self, studio: Any, source: str, token: str | None = None):
        self.studio = studio
        self.source = source
        self.token = token or None
        self.key = f"diarization:{source}"

    def _load(self, device: str) -> Any:
        src = check_source(self.source)  # before pyannote unpickles anything it names
        import torch
        from pyannote.audio import Pipeline

        if Path(src).is_dir() and (Path(src) / "config.yaml").exists():
            src = str(Path(src))
        try:
            pipe = Pipeline.from_pretrained(src, token=self.token,
                                            cache_dir=str(Path(self.studio.settings.cache_dir)
                                                          / "pyannote"))
        except Exception as e:  # hub errors come in many types; the message is what matters
            raise DiarizationUnavailable(
                f"could not load the diarization pipeline {self.source!r}: {e}. For the hub "
                "pipeline, accept its terms on huggingface.co and give your access token; or "
                "point to a local folder") from None
        if pipe is None:
            raise DiarizationUnavailable(
                f"{self.source!r} is gated or missing: accept its terms on huggingface.co and "
                "give your access token, or point to a local folder")
        return pipe.to(torch.device(device))

    def register(self) -> str:
        from studio.models import ModelSpec

        cuda = self.studio.device == "cuda"
        return self.studio.models.ensure(self.key, lambda: ModelSpec(
            key=self.key, load=self._load, title="pyannote speaker diarization",
            estimate=int(0.2e9) if cuda else 0, reserve=int(0.8e9) if cuda else 0))

    def diarize(self, audio: np.ndarray, num_speakers: int | None = None,
                min_speakers: int | None = None,
                max_speakers: int | None = None) -> list[Turn]:
        with self.studio.models.use(self.register()) as pipe:
            return run_pipeline(pipe, audio, num_speakers, min_speakers, max_speakers)
