"""RAG tab: chat over your own notes and code, with sources, hybrid retrieval and evaluation."""

from __future__ import annotations

from typing import Any

TITLE = "RAG"


def build_ui(studio: Any) -> None:
    """Called by the app inside ``with gr.Tab(TITLE)``; Gradio is imported only here."""
    from tabs.rag.ui import build_ui as _build

    _build(studio)
