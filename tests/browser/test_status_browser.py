"""The status area in headless Chromium (#19, #24 item 14): a long model key does not push
size, state and last-used off screen, headers do not break inside a word, the table is not
called VRAM on a CPU, a model outside torch is not shown as 0 B, and the Model dropdown drops
the key of a model just unloaded."""

from __future__ import annotations

import os
import re

import pytest

from studio.models import ModelSpec
from tests.browser.chromium import needs_chromium, running_studio, studio_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LONG_KEY = "llm:SmolLM2-135M-Instruct.Q4_1.gguf:9f7c41ee0123456789:ctx8192:generate"

# for each header: its longest word's width against the width the header's text has
HEADER_FIT = """() => [...document.querySelectorAll('#studio-status th')]
  .filter(th => th.offsetParent !== null).map(th => {
    const c = document.createElement('canvas').getContext('2d');
    c.font = getComputedStyle(th).font; const t = th.innerText.trim();
    const w = Math.max(0, ...t.split(/\\s+/).map(x => c.measureText(x).width));
    return [t, w, th.getBoundingClientRect().width]; })"""


@needs_chromium
def test_status_area_fits_and_follows(tmp_path):
    import torch

    shots = os.environ.get("STUDIO_ARTIFACTS")
    with running_studio(tmp_path / "home", tab_modules=["tests.app.toytab"]) as (s, url):
        s.models.register(ModelSpec(LONG_KEY, load=lambda d: torch.nn.Linear(64, 64),
                                    title="SmolLM2 with a long key"))
        s.models.register(ModelSpec("whisper:ct2:tiny", load=lambda d: {"ct2": "not torch"},
                                    title="Whisper tiny (CTranslate2)"))
        for k in (LONG_KEY, "whisper:ct2:tiny"):
            with s.models.use(k):
                pass
        with studio_page(url, width=1280, height=900) as (_browser, page, _errors):
            page.get_by_text("GPU memory and jobs").click()
            status = page.locator("#studio-status")
            page.wait_for_function("() => document.querySelector('#studio-status')"
                                   "?.innerText.includes('Whisper tiny (CTranslate2)')",
                                   timeout=15_000)
            page.wait_for_timeout(2500)  # a timer refresh or two
            if shots:
                page.screenshot(path=os.path.join(shots, "status-area.png"), full_page=True)
            text = status.inner_text()
            assert "Memory (CPU RAM" in page.locator("#studio-status").inner_text()
            assert "VRAM ledger" not in page.locator("#studio-status").inner_text()
            assert "not measured" in text
            assert re.search(r"CTranslate2\)\s+resident\s+0 B", text) is None
            # every column in view, with the long key in the table
            right = page.evaluate("() => [...document.querySelectorAll('#studio-status th')]"
                                  ".filter(th => th.offsetParent !== null)"
                                  ".map(th => th.getBoundingClientRect().right)")
            assert right and max(right) <= 1280, right
            for text, word, width in page.evaluate(HEADER_FIT):
                assert word <= width, (text, word, width)  # no header broken mid-word
            # unload the long-key model: the dropdown lets go of its key
            page.get_by_label("Model", exact=True).click()
            page.get_by_role("option").filter(has_text=LONG_KEY).first.click()
            page.get_by_role("button", name="Unload").click()
            page.get_by_text("Unloaded").first.wait_for(timeout=15_000)
            page.wait_for_timeout(2500)
            assert page.get_by_label("Model", exact=True).input_value() == ""
