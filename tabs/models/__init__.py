"""Models: every role's model for the active profile, its size, VRAM and whether it is on disk;
curated alternatives and any hub id, folder or file; downloads as background jobs with
progress, Cancel and resume; the hub token; what the models take on disk."""

from __future__ import annotations

from typing import Any

TITLE = "Models"


def build_ui(studio: Any) -> None:
    """Called by the app inside ``with gr.Tab(TITLE):``; Gradio is imported only here."""
    from tabs.models.ui import build_ui as _build

    _build(studio)
