"""Vision: chat about pictures with a 4-bit vision-language model (LLaVA, Qwen2.5-VL, SmolVLM2)
at the LLM engine's speed, grounding boxes sent to the YOLO labeler, and adapting the model to
your own image-text pairs as a job."""

from __future__ import annotations

from typing import Any

TITLE = "Vision"


def build_ui(studio: Any) -> None:
    """Called by the app inside ``with gr.Tab(TITLE):``; Gradio is imported only here."""
    from tabs.vlm.ui import build_ui as _build

    _build(studio)
