"""On the GPU machine: the Transcribe tab's real path on CUDA. With no faster-whisper there (and
CTranslate2's CUDA 12 build unusable on CUDA 13) the transformers engine is chosen; the model
loads through studio.models in fp16 with SDPA and turns pyannote's sample clip into segments,
SRT and a playable cut. Tiny random Whisper (tiny.en's tokenizer): plumbing and speed, not
quality. Needs $STUDIO_WHISPER_TOKENIZER (a folder with tiny.en's tokenizer.json) where the
offline tiny.en package is missing, and pyannote.audio's files for the sample clip."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def sample_clip() -> Path:
    spec = importlib.util.find_spec("pyannote.audio")  # the files only; no pyannote import
    return Path(list(spec.submodule_search_locations)[0]) / "sample" / "sample.wav"


@pytest.fixture
def studio(tmp_path):
    from studio.config import Settings
    from studio.context import build_studio

    s = build_studio(Settings(home=tmp_path / "home", profile="small",
                              vram_budget=12 * 1024**3), start_jobs=False)
    yield s
    s.close()


def test_transcribe_on_cuda_with_the_transformers_engine_in_fp16(studio, tmp_path):
    from tabs.whisper.config import TranscribeConfig
    from tabs.whisper.engines import attention_in_use, choose_engine, ctranslate2_cuda_problem
    from tabs.whisper.random_models import random_whisper_folder, whisper_tokenizer_dir
    from tabs.whisper.service import get_service

    assert studio.device == "cuda"
    tok = whisper_tokenizer_dir()
    assert tok is not None, "set STUDIO_WHISPER_TOKENIZER to a folder with tokenizer.json"
    # a size name, as a real user picks: transformers wherever CTranslate2 cannot use the GPU
    name, why = choose_engine("auto", "cuda", "large-v3")
    problem = ctranslate2_cuda_problem()
    assert name == ("transformers" if problem else "faster-whisper"), why
    if problem:
        assert "fp16 + SDPA on the GPU" in why

    folder = random_whisper_folder(tmp_path / "whisper-tiny-random", "tiny", tok,
                                   fixed_tokens=24)
    svc = get_service(studio)
    cfg = TranscribeConfig(model=str(folder), beam_size=1, vad=False, diarize=False,
                           batch_size=4)
    seen: list[float] = []
    t = svc.transcribe(sample_clip(), cfg, progress=lambda f, m: seen.append(f))
    assert t.engine == "transformers" and seen[-1] == 1.0
    engine, _ = svc.engine_for(cfg)
    rows = {r.key: r for r in studio.models.loaded()}
    assert engine.key in rows and rows[engine.key].size > 0  # measured on the GPU
    with studio.models.use(engine.key) as pipe:
        assert pipe.model.device.type == "cuda"
        assert pipe.model.dtype == torch.float16
        # word timestamps need the decoder's attention weights (eager); the encoder stays SDPA
        assert attention_in_use(pipe.model)["encoder"] == "sdpa"

    assert t.segments and abs(t.duration - 30.0) < 0.1
    times = [(w.start, w.end) for s in t.segments for w in s.words]
    assert times and all(0 <= a <= b <= t.duration + 0.01 for a, b in times)
    tid = svc.save(t)
    srt = svc.export(tid, "srt").read_text()
    cues = re.findall(r"^\d+\n\d\d:\d\d:\d\d,\d\d\d --> \d\d:\d\d:\d\d,\d\d\d$", srt, re.M)
    assert len(cues) == len(t.segments)
    clip, start = svc.play_from(tid, len(t.segments) - 1)
    assert clip.stat().st_size > 44 and start == t.segments[-1].start
    assert studio.models.used() <= studio.models.budget


def test_long_recording_in_batched_windows_on_cuda(studio, tmp_path):
    """2 minutes = two windows of 2 x 30 s chunks: times carry over between windows."""
    import numpy as np

    from tabs.whisper.audio import load_audio, write_wav
    from tabs.whisper.config import TranscribeConfig
    from tabs.whisper.random_models import random_whisper_folder, whisper_tokenizer_dir
    from tabs.whisper.service import get_service

    folder = random_whisper_folder(tmp_path / "whisper-tiny-random", "tiny",
                                   whisper_tokenizer_dir(), fixed_tokens=24)
    long = write_wav(tmp_path / "long.wav", np.tile(load_audio(sample_clip()), 4))
    svc = get_service(studio)
    steps: list[str] = []
    t = svc.transcribe(long, TranscribeConfig(model=str(folder), beam_size=1, vad=False,
                                              diarize=False, batch_size=2),
                       progress=lambda f, m: steps.append(m))
    assert sum("transcribing" in m for m in steps) >= 2
    assert abs(t.duration - 120.0) < 0.1
    assert max(w.end for s in t.segments for w in s.words) > 60.0
    assert all(w.end <= t.duration + 0.01 for s in t.segments for w in s.words)


def test_random_pyannote_on_cuda_labels_the_transcript(studio, tmp_path):
    """segmentation-3.0 + WeSpeaker ResNet34 shapes (random) on CUDA through studio.models,
    in the same transcription as Whisper: every segment gets a speaker id."""
    pytest.importorskip("pyannote.audio")
    from studio.models import ModelSpec
    from tabs.whisper.config import TranscribeConfig
    from tabs.whisper.diarization import PyannoteDiarizer
    from tabs.whisper.random_models import (
        random_pyannote_pipeline,
        random_whisper_folder,
        whisper_tokenizer_dir,
    )
    from tabs.whisper.service import get_service

    folder = random_whisper_folder(tmp_path / "whisper-tiny-random", "tiny",
                                   whisper_tokenizer_dir(), fixed_tokens=24)
    d = PyannoteDiarizer(studio, "random:real")
    studio.models.register(ModelSpec(
        key=d.key, load=lambda dev: random_pyannote_pipeline("real").to(torch.device(dev))))
    t = get_service(studio).transcribe(
        sample_clip(), TranscribeConfig(model=str(folder), beam_size=1, vad=False,
                                        batch_size=1), diarizer=d)
    assert t.segments and all(s.speaker and s.speaker.startswith("SPEAKER_")
                              for s in t.segments)
    with studio.models.use(d.key) as pipe:
        assert next(pipe._segmentation.model.parameters()).device.type == "cuda"
