"""The README's API section lists every public api_name of the full app, and nothing is left
with an auto-generated name (a script could not rely on it)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_public_action_is_named_and_documented(tmp_path):
    from studio.app import build_app, public_api_names
    from studio.config import Settings
    from studio.context import build_studio

    s = build_studio(Settings(home=tmp_path / "home", profile="small"), start_jobs=False)
    try:
        names = public_api_names(build_app(s))
    finally:
        s.close()
    generated = [n for n in names if re.fullmatch(r"(lambda|fn|predict)(_\d+)?", n)]
    assert not generated, f"actions without an explicit api_name: {generated}"
    section = README.read_text().split("<!-- api-names:start -->")[1].split("<!-- api-names")[0]
    job_panel = {n for n in names if re.search(r"_(job_view|cancel|resume)$", n)}
    missing = [n for n in names if f"`/{n}`" not in section and n not in job_panel]
    assert not missing, f"README API section lacks: {missing}"
    assert {"studio_status", "studio_unload", "studio_free_all"} <= set(names)
