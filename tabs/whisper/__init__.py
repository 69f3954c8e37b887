"""Whisper tab: transcribe a recording with speakers, subtitles and an optional LLM post-edit."""

from __future__ import annotations

from typing import Any

TITLE = "Transcribe"


def build_ui(studio: Any) -> None:
    """Called by the app inside ``with gr.Tab(TITLE)``; Gradio is imported only here."""
    from tabs.whisper.ui import build_ui as _build

    _build(studio)
