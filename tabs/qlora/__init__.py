"""QLoRA trainer: fine-tune a 7-8B LLM in 4-bit with LoRA on your own instruction pairs, watch
it learn, compare base vs adapter, export the adapter and chat with it."""

from __future__ import annotations

from typing import Any

TITLE = "QLoRA trainer"


def build_ui(studio: Any) -> None:
    """Called by the app inside ``with gr.Tab(TITLE):``; Gradio is imported only here."""
    from tabs.qlora.ui import build_ui as _build

    _build(studio)
