"""Whisper fine-tune tab: tune Whisper small (full) or medium (LoRA) on your own recordings,
compare before/after on held-out pieces, and transcribe with the result in the Transcribe tab."""

from __future__ import annotations

from typing import Any

TITLE = "Whisper fine-tune"


def build_ui(studio: Any) -> None:
    """Called by the app inside ``with gr.Tab(TITLE)``; Gradio is imported only here."""
    from tabs.whisper_ft.ui import build_ui as _build

    _build(studio)
