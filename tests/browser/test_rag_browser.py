"""Headless Chromium in the RAG tab (#19): a knowledge base made after the page was built is
shown selected, also after a page reload, and Ask works from it straight away; an answer that
cites nothing shows a "Related passage", not sources. Screenshot: tests/artifacts/rag-reload.png.
"""

from __future__ import annotations

import pytest

from tests.app.test_rag_trust_app import StandInEngine
from tests.browser.test_browser import ARTIFACTS, CHROMIUM, FLAGS
from tests.conftest import launch_studio, stop_studio
from tests.unit.rag_corpus import write_corpus

pytestmark = pytest.mark.browser


@pytest.mark.slow  # Chromium, the embedder and two page loads: ~1 minute on 2 shared cores
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_the_knowledge_base_stays_selected_after_a_reload_and_ask_works(tmp_path):
    from playwright.sync_api import sync_playwright

    from tabs.rag.service import get_service

    s, app, url = launch_studio(tmp_path / "home", tab_modules=["tabs.rag"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    errors = []
    try:
        svc = get_service(s)  # made after the page was built, as by another session
        svc.ingest("notes", [str(p) for p in write_corpus(tmp_path / "corpus")],
                   background=False)
        svc.engine = StandInEngine("The guest wifi password is tangerine-42.")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, wait_until="load", timeout=60_000)
            page.get_by_role("tab", name="RAG").click()
            kb = page.get_by_label("Knowledge base").first
            page.wait_for_function("() => [...document.querySelectorAll('input')].some("
                                   "i => i.value === 'notes')", timeout=30_000)
            assert kb.input_value() == "notes"
            page.reload(wait_until="load")
            page.get_by_role("tab", name="RAG").click()
            page.wait_for_function("() => [...document.querySelectorAll('input')].some("
                                   "i => i.value === 'notes')", timeout=30_000)
            assert page.get_by_label("Knowledge base").first.input_value() == "notes"
            page.get_by_label("Question").fill("What is the guest wifi password?")
            page.get_by_role("button", name="Ask", exact=True).click()
            page.get_by_text("Related passage").first.wait_for(timeout=60_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "rag-reload.png"), full_page=True)
            chat = page.locator("#rag-chat").inner_text()
            toasts = page.locator(".toast-body").all_inner_texts()
            browser.close()
    finally:
        stop_studio(s, app)
    assert not errors, errors
    assert "Sources:" not in chat and "wifi.txt" in chat, chat
    assert not [t for t in toasts if "Error" in t], toasts
