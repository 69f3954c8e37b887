"""Headless Chromium (Debian's, driven by Playwright) opens the studio, clicks every tab and
saves a screenshot of each as a CI artifact (tests/artifacts/, or $STUDIO_ARTIFACTS)."""

from __future__ import annotations

import pytest

from tests.browser.chromium import ARTIFACTS, needs_chromium, running_studio, studio_page

pytestmark = pytest.mark.browser


@needs_chromium
def test_every_tab_opens_and_renders(tmp_path):
    from studio.app import available_tabs

    titles = [m.TITLE for m in available_tabs()]
    with running_studio(tmp_path / "home") as (_s, url):
        with studio_page(url) as (_browser, page, errors):
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
    assert not errors, errors
    assert (ARTIFACTS / "status.png").stat().st_size > 10_000
