"""The shared job panel in headless Chromium: the log box shows the newest lines, the run
picker stops saying "running" once the run ends, and after a reload a finished run with a
folder output (QLoRA's adapter/) is shown, with its files offered for download."""

from __future__ import annotations

import time

import pytest

from tests.browser.chromium import needs_chromium, running_studio, studio_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@needs_chromium
def test_panel_log_picker_and_reload(tmp_path):
    with running_studio(tmp_path / "home", tab_modules=["tests.app.paneltab"]) as (s, url):
        with studio_page(url) as (_browser, page, errors):
            page.get_by_label("steps").fill("8")
            page.get_by_role("button", name="Start").click()
            picker = page.get_by_label("Run", exact=True)
            page.wait_for_function("() => [...document.querySelectorAll('input')].some("
                                   "i => i.value.includes('running'))", timeout=30_000)
            rid = s.jobs.list_runs("paneltoy")[0].id
            assert s.jobs.wait(rid, timeout=60).status == "succeeded"
            # the picker's label follows the run's end (it said "running" for good)
            page.wait_for_function("() => [...document.querySelectorAll('input')].some("
                                   "i => i.value.includes('succeeded'))", timeout=15_000)
            assert "running" not in picker.input_value()
            log = page.get_by_label("Log (last lines)")
            page.wait_for_function(
                "() => { const t = document.querySelector('.studio-log textarea');"
                " return t && t.value.includes('the last line of the run'); }", timeout=15_000)
            time.sleep(1.0)
            # the newest line is in view, not below the box's fold
            in_view = log.evaluate("t => t.scrollTop + t.clientHeight >= t.scrollHeight - 4")
            assert in_view and "preamble line 0" not in log.input_value()
            page.locator("td[aria-label='adapter.zip']").first.wait_for(timeout=15_000)

            page.reload(wait_until="load")
            page.get_by_label("Run", exact=True).click()
            page.get_by_role("option").filter(has_text="succeeded").first.click()
            page.get_by_text("Panel toy run").first.wait_for(timeout=15_000)
            page.locator("text=succeeded").first.wait_for(timeout=15_000)
            assert page.get_by_text("No run selected.").count() == 0
            page.locator("td[aria-label='adapter.zip']").first.wait_for(timeout=15_000)
    assert not errors, errors
