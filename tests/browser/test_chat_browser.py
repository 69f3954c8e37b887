"""The Chat tab in headless Chromium (#19): a failed send leaves no red "Error" overlay on the
chat or the message box (the failure is said in the chat, the message kept); "New chat"
clears; a finished chat is saved for this browser and opens again after a reload; the
regenerate button answers again."""

from __future__ import annotations

import os

import pytest

from tests.browser.chromium import needs_chromium, running_studio, studio_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Gradio's status tracker marks an output that failed with this (the red "Error" + ×)
OVERLAY = ".wrap.error, .error-message, [data-testid='status-tracker'] .error"


@needs_chromium
def test_chat_error_new_chat_saved_chats_and_regenerate(tmp_path):
    from studio.llm.testing import build_tokenizer, save_chat_model, tiny_model

    tok = build_tokenizer("llama3.1")
    folder = save_chat_model(tiny_model("llama3.1", tok, seed=2), tok, tmp_path / "model")
    shots = os.environ.get("STUDIO_ARTIFACTS")
    with running_studio(tmp_path / "home", tab_modules=["tabs.chat"]) as (_s, url):
        with studio_page(url) as (browser, page, errors):
            page.get_by_label("Local folder, .gguf file or hub id").check()
            box = page.get_by_placeholder("Type a message and press Enter")
            box.fill("Hello there")
            page.get_by_role("button", name="Send").click()
            page.locator("#chat-box").get_by_text("Enter a hub id").first.wait_for(
                timeout=30_000)
            page.wait_for_timeout(500)
            if shots:
                page.screenshot(path=os.path.join(shots, "chat-error.png"), full_page=True)
            assert page.locator(OVERLAY).count() == 0, page.locator(OVERLAY).first.inner_html()
            assert box.input_value() == "Hello there" and box.is_editable()
            page.get_by_role("button", name="New chat").click()
            page.wait_for_timeout(800)
            assert page.locator("#chat-box").get_by_text("Enter a hub id").count() == 0
            assert page.locator(OVERLAY).count() == 0

            page.get_by_label("Model", exact=True).fill(str(folder))
            box.fill("Hello there")
            page.get_by_role("button", name="Send").click()
            page.locator("#chat-stats").get_by_text("tok/s").wait_for(timeout=60_000)
            page.wait_for_function(
                "() => document.querySelector('#chat-saved input')?.value.includes('Hello')",
                timeout=15_000)
            first = page.locator("#chat-box .bot").last.inner_text()
            # regenerate: the retry button under the last answer streams a new one
            page.locator("#chat-box button[aria-label='Retry']").last.click()
            page.wait_for_timeout(500)
            page.locator("#chat-stats").get_by_text("tok/s").wait_for(timeout=60_000)
            assert page.locator("#chat-box .user").count() == 1
            assert page.locator("#chat-box .bot").last.inner_text().strip() or first

            page.reload(wait_until="load")
            page.locator("#chat-saved input").click()
            page.get_by_role("option").filter(has_text="Hello there").first.click()
            page.locator("#chat-box").get_by_text("Hello there").first.wait_for(timeout=15_000)
            other = browser.new_context().new_page()  # another browser: sees no saved chats
            other.goto(url, wait_until="load", timeout=60_000)
            other.wait_for_timeout(1500)
            other.locator("#chat-saved input").click()
            other.wait_for_timeout(500)
            assert other.get_by_role("option").filter(has_text="Hello there").count() == 0
    assert not errors, errors
