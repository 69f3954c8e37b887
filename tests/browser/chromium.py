"""What every browser test starts with: a launched studio and Debian's Chromium, driven by
Playwright, with one page open on it. The tests keep only what they click and check."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import launch_studio, stop_studio

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("STUDIO_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "artifacts"))
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")

# Every toast the page shows, kept even after it fades (type + text).
TOAST_SPY = """
window.__toasts = [];
new MutationObserver((muts) => {
  for (const m of muts) for (const n of m.addedNodes) {
    if (!(n instanceof HTMLElement)) continue;
    const bodies = n.matches('[data-testid=toast-body]') ? [n]
                 : [...n.querySelectorAll('[data-testid=toast-body]')];
    for (const b of bodies) window.__toasts.push([b.className, b.innerText]);
  }
}).observe(document, {childList: true, subtree: true});
"""


@contextmanager
def running_studio(home: Path, tab_modules: list[str] | None = None) -> Iterator:
    """The real app launched on loopback for the block; yields (studio, url), closed after."""
    s, app, url = launch_studio(home, tab_modules=tab_modules)
    try:
        yield s, url
    finally:
        stop_studio(s, app)


@contextmanager
def studio_page(url: str, *, width: int = 1400, height: int = 1000, args: tuple[str, ...] = (),
                init_script: str | None = None, console_errors: bool = False,
                **page_kw) -> Iterator:
    """Chromium with one page loaded from `url`; yields (browser, page, errors).

    `errors` collects the page's uncaught script errors (and with `console_errors` the
    console's error lines) for the test to assert on; the artifacts folder exists."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[*FLAGS, *args])
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, **page_kw)
            if init_script:
                page.add_init_script(init_script)
            page.on("pageerror", lambda e: errors.append(str(e)))
            if console_errors:
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url, wait_until="load", timeout=60_000)  # timers poll: never idle
            yield browser, page, errors
        finally:
            browser.close()
