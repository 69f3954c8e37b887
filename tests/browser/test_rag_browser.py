"""Headless Chromium in the RAG tab (#19): a knowledge base made after the page was built is
shown selected, also after a page reload, and Ask works from it straight away; an answer that
cites nothing shows a "Related passage", not sources. Screenshot: tests/artifacts/rag-reload.png.
"""

from __future__ import annotations

import pytest

from tests.app.test_rag_trust_app import StandInEngine
from tests.browser.chromium import ARTIFACTS, needs_chromium, running_studio, studio_page
from tests.unit.rag_corpus import write_corpus

pytestmark = pytest.mark.browser


@pytest.mark.slow  # Chromium, the embedder and two page loads: ~1 minute on 2 shared cores
@needs_chromium
def test_the_knowledge_base_stays_selected_after_a_reload_and_ask_works(tmp_path):
    from tabs.rag.service import get_service

    with running_studio(tmp_path / "home", tab_modules=["tabs.rag"]) as (s, url):
        svc = get_service(s)  # made after the page was built, as by another session
        svc.ingest("notes", [str(p) for p in write_corpus(tmp_path / "corpus")],
                   background=False)
        svc.engine = StandInEngine("The guest wifi password is tangerine-42.")
        with studio_page(url, height=1100) as (_browser, page, errors):
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
    assert not errors, errors
    assert "Sources:" not in chat and "wifi.txt" in chat, chat
    assert not [t for t in toasts if "Error" in t], toasts
