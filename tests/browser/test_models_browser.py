"""Headless Chromium opens the Models tab, starts a download from a local fake hub with the
Download button and screenshots it in progress (tests/artifacts/models-download.png)."""

from __future__ import annotations

import pytest

from tests.browser.test_browser import ARTIFACTS, CHROMIUM, FLAGS
from tests.conftest import launch_studio, stop_studio
from tests.fakehub import FakeHub, FakeRepo, point_client_at

pytestmark = pytest.mark.browser
MiB = 1024**2


@pytest.mark.slow  # Chromium and a 40 MiB download at 2 MiB/s: 20-60 s on 2 shared cores
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_models_page_shows_a_download_in_progress(tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    from tabs.models import service

    fake = FakeHub().start()
    fake.add(FakeRepo("demo/slow-chat", {"config.json": b"{}",
                                         "model.safetensors": b"\x01" * 40 * MiB},
                      bytes_per_second=2 * MiB))
    point_client_at(monkeypatch, fake, tmp_path / "cache")
    s, app, url = launch_studio(tmp_path / "home", tab_modules=["tabs.models"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    errors = []
    try:
        service.choose(s, "chat", "demo/slow-chat")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, wait_until="load", timeout=60_000)
            page.get_by_role("tab", name="Models").click()
            page.get_by_text("demo/slow-chat").first.wait_for(timeout=30_000)
            page.get_by_role("button", name="Download", exact=True).click()
            page.get_by_text("Downloading demo/slow-chat").first.wait_for(timeout=30_000)
            shot = ARTIFACTS / "models-download.png"
            bar = page.locator(".studio-progress", has_text="/s · file").first  # MiB, speed
            try:
                bar.wait_for(timeout=30_000)
                page.wait_for_timeout(1500)
            finally:
                page.screenshot(path=str(shot), full_page=True)
            line = bar.inner_text()
            pct = float(line.split("%")[0])
            assert 0 < pct < 100 and "MiB/s" in line, line
            page.get_by_text("ETA").first.wait_for(timeout=10_000)
            browser.close()
        run = s.jobs.list_runs("models")[0]
        s.jobs.cancel(run.id)
        s.jobs.wait(run.id, 30)
    finally:
        stop_studio(s, app)
        fake.stop()
    assert not errors, errors
    assert shot.stat().st_size > 20_000
