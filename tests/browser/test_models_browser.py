"""Headless Chromium opens the Models tab, starts a download from a local fake hub with the
Download button and screenshots it in progress (tests/artifacts/models-download.png)."""

from __future__ import annotations

import pytest

from tests.browser.chromium import ARTIFACTS, needs_chromium, running_studio, studio_page
from tests.fakehub import FakeHub, FakeRepo, point_client_at

pytestmark = pytest.mark.browser
MiB = 1024**2


@pytest.mark.slow  # Chromium and a 40 MiB download at 2 MiB/s: 20-60 s on 2 shared cores
@needs_chromium
def test_models_page_shows_a_download_in_progress(tmp_path, monkeypatch):
    from tabs.models import service

    fake = FakeHub().start()
    fake.add(FakeRepo("demo/slow-chat", {"config.json": b"{}",
                                         "model.safetensors": b"\x01" * 40 * MiB},
                      bytes_per_second=2 * MiB))
    point_client_at(monkeypatch, fake, tmp_path / "cache")
    try:
        with running_studio(tmp_path / "home", tab_modules=["tabs.models"]) as (s, url):
            service.choose(s, "chat", "demo/slow-chat")
            with studio_page(url, height=1100) as (_browser, page, errors):
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
            run = s.jobs.list_runs("models")[0]
            s.jobs.cancel(run.id)
            s.jobs.wait(run.id, 30)
    finally:
        fake.stop()
    assert not errors, errors
    assert shot.stat().st_size > 20_000
