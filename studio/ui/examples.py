"""The example inputs in assets/ that each tab's `gr.Examples` offers a first-time user.

Paths only (no Gradio here): a tab passes them to ``gr.Examples(..., cache_examples=False)``.
A missing file (a trimmed install) leaves that example out instead of failing the tab.
"""

from __future__ import annotations

import json
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def asset(*parts: str) -> str | None:
    """The absolute path of assets/<parts...>, or None when it is not there."""
    p = ASSETS.joinpath(*parts)
    return str(p) if p.is_file() else None


def assets_in(folder: str, *suffixes: str) -> list[str]:
    """The files of assets/<folder> (sorted), those ending in `suffixes` if given."""
    d = ASSETS / folder
    if not d.is_dir():
        return []
    return [str(p) for p in sorted(d.iterdir())
            if p.is_file() and (not suffixes or p.suffix.lower() in suffixes)]


def prompts(tab: str) -> list[str]:
    """The example prompts of `tab` from assets/prompts.json (empty if it is not there)."""
    try:
        return list(json.loads((ASSETS / "prompts.json").read_text(encoding="utf-8"))[tab])
    except (OSError, ValueError, KeyError):
        return []


def logo_svg() -> str:
    """assets/logo.svg as inline markup for the header (empty if it is not there)."""
    try:
        return (ASSETS / "logo.svg").read_text(encoding="utf-8")
    except OSError:
        return ""
