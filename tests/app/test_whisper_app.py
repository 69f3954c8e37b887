"""The Transcribe tab through gradio_client: transcribe, export, rename errors, bad input."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import launch_studio, stop_studio

pytestmark = pytest.mark.slow


def test_transcribe_and_export_over_the_api(tmp_path):
    from gradio_client import Client, handle_file

    wav = tmp_path / "hello.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav),
                    "Please send the report to the whole team."], check=True)
    bad = tmp_path / "broken.mp3"
    bad.write_bytes(b"ID3 not really an mp3" * 20)
    s, app, url = launch_studio(tmp_path / "home", tab_modules=["tabs.whisper"])
    try:
        if not s.choices["whisper"].source:
            pytest.skip("tiny.en weights not installed")
        c = Client(url, verbose=False)
        args = [s.choices["whisper"].source, "auto", "int8", "auto", 1, "", "", True, True,
                True, 0, 0, 0, "", ""]
        tid, view, notes, _ = c.predict(handle_file(str(wav)), None, *args,
                                        api_name="/whisper_transcribe")
        assert "report" in view.lower() and "no diarization weights" in notes
        srt = c.predict(tid, "srt", api_name="/whisper_export")
        text = open(srt, encoding="utf-8").read()
        assert text.startswith("1\n00:00:0") and "report" in text.lower()
        with pytest.raises(Exception, match="no speaker"):
            c.predict(tid, "SPEAKER_00", "Ann", api_name="/whisper_rename")
        with pytest.raises(Exception, match="could not be decoded"):
            c.predict(handle_file(str(bad)), None, *args, api_name="/whisper_transcribe")
    finally:
        stop_studio(s, app)
