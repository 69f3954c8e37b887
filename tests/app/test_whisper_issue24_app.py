"""Transcribe through gradio_client (#24 items 11-13, #19, #18): segments stream while the
transcription runs, the model is named, offline speakers come from the weak fallback, the
glossary post-edit needs no model and says the chat model is too small, nothing is accepted
twice, and a Whisper size that is not on disk points to the Models tab instead of downloading.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from tabs.whisper.audio import load_audio, write_wav
from tests.conftest import launch_studio, stop_studio

pytestmark = pytest.mark.slow

A = ["-v", "en-us", "-s", "150"]
B = ["-v", "en+f3", "-p", "80", "-s", "140"]


def two_voices(path):
    gap = np.zeros(8000, np.float32)
    parts = []
    for i, (voice, text) in enumerate([
            (A, "Please send the report to the whole team before noon."),
            (B, "Sure, I will do that right after lunch today."),
            (A, "Then we meet again on Friday morning to plan the next release."),
            (B, "Friday works for me, I will bring the numbers.")]):
        wav = path.parent / f"part{i}.wav"
        subprocess.run(["espeak-ng", *voice, "-w", str(wav), text], check=True)
        parts += [load_audio(wav), gap]
    return write_wav(path, np.concatenate(parts))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from gradio_client import Client

    s, demo, url = launch_studio(tmp_path_factory.mktemp("wh24"), tab_modules=["tabs.whisper"])
    yield Client(url, verbose=False), s
    stop_studio(s, demo)


def args(s, model=None, diarize=True):
    return [model or s.choices["whisper"].source, "auto", "int8", "auto", 1, "", "", True, True,
            diarize, 0, 0, 0, "", ""]


def test_segments_stream_speakers_come_offline_and_the_model_is_named(app, tmp_path):
    from gradio_client import handle_file

    from tabs.whisper import dvector

    c, s = app
    if not s.choices["whisper"].source:
        pytest.skip("tiny.en weights not installed")
    wav = two_voices(tmp_path / "meeting.wav")
    job = c.submit(handle_file(str(wav)), None, *args(s), api_name="/whisper_transcribe")
    final = job.result(timeout=300)
    outs = job.outputs()
    # the view showed segments before the transcript was done (no id yet, still running)
    partial = [o for o in outs[:-1] if "whisper-seg" in o[1] and "transcribing" in o[1]]
    assert partial, [o[1][:80] for o in outs]
    tid, view, notes, speaker = final
    assert tid and "Model: Whisper tiny.en" in notes and "/" not in notes.split("\n")[0]
    if dvector.available():
        assert "2 speaker(s) found by the weak offline fallback" in notes
        assert [x[0] for x in speaker["choices"]] == ["SPEAKER_00", "SPEAKER_01"]
        view = c.predict(tid, "SPEAKER_01", "Sheila", api_name="/whisper_rename")[0]
        assert "Sheila" in view
    txt = open(c.predict(tid, "txt", api_name="/whisper_export"), encoding="utf-8").read()
    assert len([ln for ln in txt.splitlines() if ln.startswith("[")]) >= 4  # line per segment


def test_glossary_post_edit_needs_no_model_and_nothing_is_accepted_twice(app):
    from tabs.whisper.service import get_service
    from tabs.whisper.transcript import Segment, Transcript

    c, s = app
    svc = get_service(s)
    tid = svc.save(Transcript([Segment(0, 2, "We deploy it on Cuban Eats."),
                               Segment(2, 4, "The data lives in post-gus.")], source="a.wav"))
    diff = c.predict(tid, "Kubernetes, Postgres", api_name="/whisper_postedit")
    assert "too small" in diff and "2 glossary fix(es)" in diff
    assert ">Kubernetes.</ins>" in diff and ">Postgres.</ins>" in diff
    assert svc._llm is None  # SmolLM2-135M was never loaded
    view, msg = c.predict(tid, api_name="/whisper_accept")
    assert "Kubernetes" in view and "Postgres" in view and "2 segment(s)" in msg
    with pytest.raises(Exception, match="Propose corrections first"):
        c.predict(tid, api_name="/whisper_accept")
    c.predict(tid, "Kubernetes, Postgres", api_name="/whisper_postedit")  # nothing left to fix
    with pytest.raises(Exception, match="nothing to accept"):
        c.predict(tid, api_name="/whisper_accept")


def test_a_whisper_size_not_on_disk_points_to_the_models_tab(app, tmp_path):
    from gradio_client import handle_file

    c, s = app
    wav = tmp_path / "hi.wav"
    subprocess.run(["espeak-ng", *A, "-w", str(wav), "Hello there, this is a test."],
                   check=True)
    with pytest.raises(Exception, match="not on disk.*Models tab"):
        c.predict(handle_file(str(wav)), None, *args(s, model="medium.en"),
                  api_name="/whisper_transcribe")
