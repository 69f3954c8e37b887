"""The Transcribe tab through gradio_client: transcribe, export, play from a segment, rename
errors, bad input."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from tabs.whisper.audio import load_audio
from tests.browser.chromium import needs_chromium, running_studio, studio_page

pytestmark = pytest.mark.slow


def _two_sentences(wav):
    """`wav`: espeak-ng saying the two sentences both tests transcribe."""
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav),
                    "Please send the report to the whole team. Then we meet again on Friday "
                    "morning to plan the next release."], check=True)
    return wav


def test_transcribe_and_export_over_the_api(tmp_path):
    from gradio_client import Client, handle_file

    wav = _two_sentences(tmp_path / "hello.wav")
    bad = tmp_path / "broken.mp3"
    bad.write_bytes(b"ID3 not really an mp3" * 20)
    with running_studio(tmp_path / "home", tab_modules=["tabs.whisper"]) as (s, url):
        if not s.choices["whisper"].source:
            pytest.skip("tiny.en weights not installed")
        c = Client(url, verbose=False)
        args = [s.choices["whisper"].source, "auto", "int8", "auto", 1, "", "", True, True,
                True, 0, 0, 0, "", ""]
        tid, view, notes, _ = c.predict(handle_file(str(wav)), None, *args,
                                        api_name="/whisper_transcribe")
        from tabs.whisper import dvector

        assert "report" in view.lower()
        assert ("weak offline fallback" if dvector.available() else "no diarization weights") \
            in notes
        srt = c.predict(tid, "srt", api_name="/whisper_export")
        text = open(srt, encoding="utf-8").read()
        assert text.startswith("1\n00:00:0") and "report" in text.lower()
        # what a click on segment 1 plays: the recording from that segment's start
        segs = json.load(open(c.predict(tid, "json", api_name="/whisper_export")))["segments"]
        assert len(segs) >= 2
        clip = c.predict(tid, 1, api_name="/whisper_play")
        got, source = load_audio(clip), load_audio(wav)
        first = round(segs[1]["start"] * 16000)
        assert first > 0 and len(got) == len(source) - first
        assert np.abs(got - source[first:]).max() < 2e-4
        with pytest.raises(Exception, match="no segment 7"):
            c.predict(tid, 7, api_name="/whisper_play")
        with pytest.raises(Exception, match="no speaker"):
            c.predict(tid, "SPEAKER_07", "Ann", api_name="/whisper_rename")
        with pytest.raises(Exception, match="could not be decoded"):
            c.predict(handle_file(str(bad)), None, *args, api_name="/whisper_transcribe")


@pytest.mark.browser
@needs_chromium
def test_clicking_a_segment_loads_the_player_from_there(tmp_path):
    """In a real browser: a click (or Enter) on a transcript segment puts the cut that starts at
    that segment into the player, through the view's own script and the click event."""
    from tabs.whisper.service import get_service

    wav = _two_sentences(tmp_path / "talk.wav")
    with running_studio(tmp_path / "home", tab_modules=["tabs.whisper"]) as (s, url):
        if not s.choices["whisper"].source:
            pytest.skip("tiny.en weights not installed")
        with studio_page(url, args=("--autoplay-policy=no-user-gesture-required",)) as (
                _browser, page, errors):
            page.get_by_role("tab", name="Transcribe").click()
            page.locator("input[type=file]").first.set_input_files(str(wav))
            page.get_by_role("button", name="Transcribe", exact=True).click()
            segs = page.locator(".whisper-seg")
            segs.nth(1).wait_for(timeout=60_000)
            svc = get_service(s)
            tid = next(svc.root.glob("*/transcript.json")).parent.name
            starts = [seg.start for seg in svc.get(tid).segments]

            def player_has(start: float) -> None:
                name = f"from_{round(start * 1000):09d}.wav"
                page.locator(f"a[href$='{name}']").first.wait_for(state="attached",
                                                                  timeout=15_000)

            segs.nth(1).click()
            player_has(starts[1])
            segs.nth(0).focus()
            page.keyboard.press("Enter")
            player_has(starts[0])
    assert not errors, errors
