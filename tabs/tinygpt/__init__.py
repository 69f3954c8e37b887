"""Tiny GPT lab: train a 0.1-10M parameter transformer from scratch (learned, RoPE or ALiBi
positions), compare runs, and generate with and without a KV cache."""

from __future__ import annotations

from typing import Any

TITLE = "Tiny GPT lab"


def build_ui(studio: Any) -> None:
    """Called by the app inside ``with gr.Tab(TITLE):``; Gradio is imported only here."""
    from tabs.tinygpt.ui import build_ui as _build

    _build(studio)
