"""Chat: talk to the studio's shared LLM engine directly (local 4-bit model, a model folder or
.gguf file, or an OpenAI-compatible server), with streaming, Stop, tokens/s and VRAM shown."""

from __future__ import annotations

from typing import Any

TITLE = "Chat"


def build_ui(studio: Any) -> None:
    """Called by the app inside ``with gr.Tab(TITLE):``; Gradio is imported only here."""
    from tabs.chat.ui import build_ui as _build

    _build(studio)
