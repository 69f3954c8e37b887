"""Stable Diffusion LoRA: train a style or product LoRA on 20-150 images (SD 1.5), then
generate with it at once (SD 1.5 or SDXL, several LoRAs with a strength each)."""

from __future__ import annotations

from typing import Any

TITLE = "Stable Diffusion LoRA"


def build_ui(studio: Any) -> None:
    """Called by the app inside ``with gr.Tab(TITLE):``; Gradio is imported only here."""
    from tabs.sd.ui import build_ui as _build

    _build(studio)
