"""assets/ (#19): the logo and the example inputs each tab's gr.Examples offers exist, are
what those tabs read, and stay small."""

from __future__ import annotations

import json
import wave
from pathlib import Path

from PIL import Image

from studio.ui.examples import ASSETS, asset, assets_in, logo_svg, prompts


def test_assets_stay_small_and_the_logo_is_an_svg():
    total = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert total < 1_000_000, total
    assert logo_svg().lstrip().startswith("<svg") and "</svg>" in logo_svg()
    assert asset("studio.css") and asset("no-such-file") is None
    assert assets_in("no-such-folder") == [] and prompts("no-such-tab") == []


def test_rag_notes_answer_the_example_questions():
    from tabs.rag.ui import EXAMPLE_QUESTIONS

    notes = " ".join(Path(p).read_text(encoding="utf-8") for p in assets_in("rag"))
    assert len(assets_in("rag")) >= 2 and len(EXAMPLE_QUESTIONS) >= 2
    for fact in ("tangerine-42", "Friday", "once a month"):
        assert fact in notes


def test_qlora_example_is_alpaca_jsonl_the_tab_reads():
    from tabs.qlora.dataset import detect_shape, read_raw, to_messages

    rows = read_raw(Path(asset("qlora", "instructions.jsonl")))
    records = [r for _, r, err in rows if err is None]
    assert len(records) == len(rows) >= 20
    assert detect_shape(records) == "alpaca"
    assert to_messages(records[0], "alpaca")[-1]["content"]


def test_pictures_and_recording_are_small_and_of_the_right_kind():
    pictures = assets_in("yolo", ".png")
    assert len(pictures) >= 2
    for p in pictures:
        assert Image.open(p).size == (96, 96) and Path(p).stat().st_size < 30_000
    with wave.open(asset("whisper", "meeting-note.wav")) as w:
        assert (w.getframerate(), w.getnchannels()) == (16000, 1)
        assert 2 < w.getnframes() / 16000 < 10
    data = json.loads((ASSETS / "prompts.json").read_text(encoding="utf-8"))
    assert all(prompts(tab) == data[tab] and data[tab] for tab in ("chat", "sd", "tinygpt"))
