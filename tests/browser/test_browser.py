"""Headless Chromium (Debian's, driven by Playwright) opens the studio, clicks every tab and
saves a screenshot of each as a CI artifact (tests/artifacts/, or $STUDIO_ARTIFACTS)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import launch_studio, stop_studio

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("STUDIO_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "artifacts"))
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_every_tab_opens_and_renders(tmp_path):
    from playwright.sync_api import sync_playwright

    from studio.app import available_tabs

    s, app, url = launch_studio(tmp_path / "home")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    titles = [m.TITLE for m in available_tabs()]
    errors = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, wait_until="load", timeout=60_000)  # timers poll: never idle
            page.get_by_text("OneGPU Studio").first.wait_for(timeout=30_000)
            for i, title in enumerate(titles):
                page.get_by_role("tab", name=title).click()
                page.wait_for_timeout(600)
                assert page.get_by_role("tab", name=title).get_attribute("aria-selected") == "true"
                page.screenshot(path=str(ARTIFACTS / f"tab-{i}.png"), full_page=True)
            page.get_by_text("GPU memory and jobs").click()
            page.get_by_role("button", name="Free all").click()
            page.get_by_text("Freed:").first.wait_for(timeout=15_000)
            page.screenshot(path=str(ARTIFACTS / "status.png"), full_page=True)
            browser.close()
    finally:
        stop_studio(s, app)
    assert not errors, errors
    assert (ARTIFACTS / "status.png").stat().st_size > 10_000
