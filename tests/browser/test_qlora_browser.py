"""The QLoRA tab's comparison table in headless Chromium (#19): long replies wrap inside their
columns and the adapter column stays on screen."""

from __future__ import annotations

import json

import pytest

from tests.browser.chromium import needs_chromium, running_studio, studio_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@needs_chromium
def test_comparison_table_shows_the_adapter_column(tmp_path):
    with running_studio(tmp_path / "home", tab_modules=["tabs.qlora"]) as (s, url):
        run = s.jobs.runs_dir / "qlora-cmp"
        (run / "adapter").mkdir(parents=True)
        (run / "adapter" / "adapter_config.json").write_text("{}")
        (run / "config.json").write_text(json.dumps({"base_model": "b", "train_file": "t"}))
        (run / "run.json").write_text(json.dumps({"id": "qlora-cmp", "kind": "qlora",
                                                  "status": "succeeded", "created": 0}))
        long = " ".join(["averyveryverylongwordwithoutspaces"] * 12)
        (run / "samples.json").write_text(json.dumps([
            {"prompt": long, "expected": long, "base": long, "adapter": "ADAPTER-REPLY " + long}]))
        (run / "results.json").write_text(json.dumps({"step": 5, "device": "cpu",
                                                      "quantization": "none"}))
        with studio_page(url, width=1280, height=900) as (_browser, page, _errors):
            pick = page.get_by_label("Trained run")
            pick.fill("qlora-cmp")
            pick.press("Enter")
            page.get_by_role("button", name="Base vs adapter").click()
            page.wait_for_function("() => document.body.innerText"
                                   ".includes('ADAPTER-REPLY')", timeout=30_000)
            box = page.evaluate("() => [...document.querySelectorAll('th')]"
                                ".filter(th => th.offsetParent !== null)"
                                ".map(th => [th.innerText.trim(), "
                                "th.getBoundingClientRect().right])")
            adapter = [r for t, r in box if t.startswith("adapter")]
            assert adapter and adapter[0] <= 1280, box
