"""Headless Chromium: a picture conversation in the Vision tab (upload, ask, streamed answer,
stats line), saved as a screenshot artifact (tests/artifacts/vlm-conversation.png)."""

from __future__ import annotations

import pytest

from tests.browser.chromium import ARTIFACTS, needs_chromium, running_studio, studio_page

pytestmark = pytest.mark.browser


@needs_chromium
@pytest.mark.slow  # ~1 minute on 2 cores; CI runs it
def test_picture_conversation_in_the_browser(tmp_path):
    from tabs.vlm.service import ASSETS
    from tabs.vlm.tiny import make_tiny_vlm

    model = make_tiny_vlm(tmp_path / "tiny-qwen2-vl", "qwen2-vl", seed=2)
    with running_studio(tmp_path / "home", tab_modules=["tabs.vlm"]) as (_s, url):
        with studio_page(url, height=1100) as (_browser, page, errors):
            page.get_by_text("OneGPU Studio").first.wait_for(timeout=30_000)
            box = page.get_by_label("Model (hub id or local folder)")
            box.fill(str(model))
            box.press("Enter")
            page.locator("input[type=file]").first.set_input_files(str(ASSETS / "shapes.png"))
            page.wait_for_timeout(1500)
            page.get_by_placeholder("Ask about the picture and press Enter").fill(
                "How many circles are there?")
            page.get_by_role("button", name="Send", exact=True).click()
            page.get_by_text("tok/s").first.wait_for(timeout=120_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "vlm-conversation.png"), full_page=True)
            bubbles = page.locator(".message").count()
    assert not errors, errors
    assert bubbles >= 2  # the picture/question and the answer
    assert (ARTIFACTS / "vlm-conversation.png").stat().st_size > 20_000
