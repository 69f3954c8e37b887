"""Issue #18 in the Vision tab through gradio_client: Load and Send with a hub model that is not
on disk answer at once with "download it on the Models tab" (no download inside the request),
and "Will it fit?" still answers for a catalogue model."""

from __future__ import annotations

import time

import pytest

from tests.conftest import launch_studio, stop_studio

pytestmark = pytest.mark.slow  # ~35 s with the launch on 2 cores


def test_a_hub_vlm_not_on_disk_points_to_the_models_tab(tmp_path, monkeypatch):
    from gradio_client import Client

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    s, app, url = launch_studio(tmp_path / "home", tab_modules=["tabs.vlm"])
    try:
        c = Client(url, verbose=False)
        settings = ["llava-hf/llava-1.5-7b-hf", "auto", 0, "", 24, 0, 0.9, 1.0, -1]
        t0 = time.monotonic()
        with pytest.raises(Exception, match="not on disk yet.*Models tab"):
            c.predict(*settings, api_name="/vlm_load")
        with pytest.raises(Exception, match="not on disk yet.*Models tab"):
            c.predict("Describe it.", None, None, [], *settings, "", api_name="/vlm_send")
        assert time.monotonic() - t0 < 30, "refused at once, not after a download attempt"
        assert "GiB" in c.predict(*settings, api_name="/vlm_chat_estimate")
    finally:
        stop_studio(s, app)
