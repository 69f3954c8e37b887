"""YOLO tab: label images in the browser, train a detector as a job, export, benchmark, detect."""

from __future__ import annotations

from typing import Any

TITLE = "YOLO"


def build_ui(studio: Any) -> None:
    """Called by the app inside ``with gr.Tab(TITLE)``; Gradio is imported only here."""
    from tabs.yolo.ui import build_ui as _build

    _build(studio)
