"""Headless Chromium: a picture conversation in the Vision tab (upload, ask, streamed answer,
stats line), saved as a screenshot artifact (tests/artifacts/vlm-conversation.png)."""

from __future__ import annotations

import pytest

from tests.browser.test_browser import ARTIFACTS, CHROMIUM, FLAGS
from tests.conftest import launch_studio, stop_studio

pytestmark = pytest.mark.browser


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
@pytest.mark.slow  # ~1 minute on 2 cores; CI runs it
def test_picture_conversation_in_the_browser(tmp_path):
    from playwright.sync_api import sync_playwright

    from tabs.vlm.service import ASSETS
    from tabs.vlm.tiny import make_tiny_vlm

    model = make_tiny_vlm(tmp_path / "tiny-qwen2-vl", "qwen2-vl", seed=2)
    s, app, url = launch_studio(tmp_path / "home", tab_modules=["tabs.vlm"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    errors = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, wait_until="load", timeout=60_000)
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
            browser.close()
    finally:
        stop_studio(s, app)
    assert not errors, errors
    assert bubbles >= 2  # the picture/question and the answer
    assert (ARTIFACTS / "vlm-conversation.png").stat().st_size > 20_000
