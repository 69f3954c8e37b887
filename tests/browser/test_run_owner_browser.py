"""Two browsers on one link in headless Chromium: a run started in one is listed there (also
after a reload: the owner is the browser's stored secret), and the other browser's run picker
and job queue never show it."""

from __future__ import annotations

import pytest

from tests.browser.chromium import needs_chromium, running_studio, studio_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _options(page) -> list[str]:
    page.get_by_label("Run", exact=True).click()
    page.wait_for_timeout(800)
    texts = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    return texts


@needs_chromium
def test_a_browsers_run_is_its_own_across_reloads(tmp_path):
    with running_studio(tmp_path / "home", tab_modules=["tests.app.paneltab"]) as (s, url):
        with studio_page(url) as (browser, page, errors):
            page.get_by_label("steps").fill("200")
            page.get_by_role("button", name="Start").click()
            page.wait_for_function("() => [...document.querySelectorAll('input')].some("
                                   "i => i.value.includes('running'))", timeout=30_000)
            rid = s.jobs.list_runs("paneltoy")[0].id
            assert s.jobs.view(rid).owner.startswith("b")  # a browser's owner, not a session
            page.reload(wait_until="load")
            page.wait_for_timeout(1500)
            assert any("Panel toy run" in t for t in _options(page))  # same browser, reloaded

            other = browser.new_context().new_page()
            other.goto(url, wait_until="load", timeout=60_000)
            other.wait_for_timeout(1500)
            assert _options(other) == []
            other.get_by_text("GPU memory and jobs").click()
            other.wait_for_timeout(2500)  # the status timer fills the queue table
            queue = other.locator("#studio-queue").inner_text()
            assert "another session's paneltoy run" in queue and rid not in queue
            assert "Panel toy run" not in queue
            s.jobs.cancel(rid)
    assert not errors, errors
