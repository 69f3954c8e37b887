"""The whole studio in headless Chromium, the way a first-time user walks through it (#19): each
tab's main flow on the small profile, mostly from the examples in assets/, with a screenshot per
step in the artifacts folder (tests/artifacts/walk-*.png, or $STUDIO_ARTIFACTS), and during the
whole walk no "Error" toast, no red error badge and no traceback in the studio's log.

Chat answers with the small model; RAG ingests the example notes and answers with a source;
Transcribe transcribes the example recording into segments, which become a Whisper fine-tune
dataset; YOLO makes the starter dataset and shows its images, Detect takes an example picture;
Vision fills an example and says whether the model fits; Models lists the cards; Tiny GPT
previews its corpus; QLoRA checks the example JSONL; Stable Diffusion sets up its CPU demo.
"""

from __future__ import annotations

import logging
import re

import pytest

from studio.ui.examples import asset
from tests.browser.chromium import (
    ARTIFACTS,
    TOAST_SPY,
    needs_chromium,
    running_studio,
    studio_page,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow,  # ~4-6 min on 2 shared cores
              needs_chromium]

# Gradio's status tracker marks an output whose handler failed (the red "Error" + ×)
BADGE = "[data-testid='status-tracker']:not(.hide) .error, .wrap.error"


class Walk:
    """The page plus what a person would notice at each step: error toasts and badges."""

    def __init__(self, page):
        self.page = page
        self.n = 0

    def shot(self, name: str) -> None:
        self.n += 1
        self.page.wait_for_timeout(400)
        self.page.screenshot(path=str(ARTIFACTS / f"walk-{self.n:02d}-{name}.png"),
                             full_page=True)
        self.check(name)

    def check(self, step: str) -> None:
        toasts = [t for t in self.page.evaluate("window.__toasts")
                  if "error" in t[0].split() or t[1].strip().startswith("Error")]
        assert not toasts, (step, toasts)
        badges = self.page.locator(BADGE)
        assert badges.count() == 0, (step, badges.first.evaluate(
            "e => e.closest('.block')?.innerText.slice(0, 300)"))

    def tab(self, title: str) -> None:
        self.page.get_by_role("tab", name=title, exact=True).first.click()
        self.page.wait_for_timeout(500)

    def visible(self, label: str):
        return self.page.locator(f"[aria-label='{label}']:visible").first

    def example(self, elem_id: str, n: int = 0) -> None:
        """Click the n-th example of the gr.Examples block `elem_id`."""
        self.page.locator(f"#{elem_id} .gallery-item, #{elem_id} tr.tr-body").nth(n).click()
        self.page.wait_for_timeout(1500)  # the example's files are copied to the page

    def text(self, pattern: str, timeout: float = 60) -> None:
        """Wait until a visible element's text matches `pattern` (other tabs' are hidden)."""
        self.page.get_by_text(re.compile(pattern, re.I)).locator("visible=true").first.wait_for(
            timeout=timeout * 1000)


def test_every_tab_main_flow_without_an_error(tmp_path, capfd, caplog):
    from studio.app import available_tabs

    caplog.set_level(logging.ERROR)
    titles = [m.TITLE for m in available_tabs()]
    done: list[str] = []
    with running_studio(tmp_path / "home") as (s, url):
        with studio_page(url, height=1100, init_script=TOAST_SPY) as (_browser, page, errors):
            page.locator("#studio-header").wait_for(timeout=180_000)  # ten tabs to render
            w = Walk(page)
            try:
                assert page.locator("#studio-logo svg").count() == 1  # the logo in the header
                w.shot("start")

                if "Chat" in titles:  # a reply from the small model, streamed, with its speed
                    w.tab("Chat")
                    box = page.get_by_placeholder("Type a message and press Enter")
                    box.fill("Say hello in one short sentence.")
                    page.get_by_role("button", name="Send", exact=True).first.click()
                    page.locator("#chat-stats").get_by_text("tok/s").wait_for(timeout=180_000)
                    assert page.locator("#chat-box .bot").last.inner_text().strip()
                    w.shot("chat")
                    done.append("Chat")

                if "RAG" in titles:  # ingest the example notes, ask an example question
                    w.tab("RAG")
                    page.get_by_role("tab", name="Sources", exact=True).click()
                    w.example("rag-example-notes")
                    page.get_by_role("button", name="Ingest", exact=True).click()
                    w.text(r"Indexed \d+ file", timeout=180)
                    w.shot("rag-ingest")
                    page.get_by_role("tab", name="Chat", exact=True).last.click()
                    w.example("rag-example-questions")
                    assert "wifi" in page.get_by_label("Question").input_value()
                    page.get_by_role("button", name="Ask", exact=True).click()
                    page.locator("#rag-sources", has_text="office-wifi").wait_for(timeout=180_000)
                    page.wait_for_function(  # the answer has finished, with its source line
                        "() => /Sources:|Related passage/.test("
                        "document.querySelector('#rag-chat')?.innerText || '')", timeout=180_000)
                    w.shot("rag-answer")
                    done.append("RAG")

                if "Transcribe" in titles and s.choices["whisper"].source:
                    w.tab("Transcribe")
                    w.example("whisper-examples")
                    page.get_by_role("button", name="Transcribe", exact=True).click()
                    page.locator("#whisper-notes", has_text="Model:").wait_for(timeout=180_000)
                    segs = page.locator("#whisper-view .whisper-seg")
                    assert segs.count() >= 1
                    assert "report" in page.locator("#whisper-view").inner_text().lower()
                    w.shot("transcribe")
                    if "Whisper fine-tune" in titles:  # its segments become training data
                        page.get_by_role("button", name="Use as training data").click()
                        w.text("dataset id", timeout=60)
                        w.shot("transcribe-to-training")
                    done.append("Transcribe")

                if "YOLO" in titles:  # the starter dataset; an example picture in Detect
                    w.tab("YOLO")
                    page.get_by_role("tab", name="Label", exact=True).click()
                    page.get_by_role("button", name=re.compile(r"^Starter dataset")).click()
                    page.wait_for_function(
                        "() => [...document.querySelectorAll('input')].some("
                        "i => /\\.(png|jpg)$/.test(i.value))", timeout=120_000)
                    page.locator("#yolo-annot canvas").first.wait_for(timeout=30_000)
                    w.shot("yolo-starter")
                    page.get_by_role("tab", name="Detect", exact=True).click()
                    w.example("yolo-examples")
                    page.locator("#yolo-detect-input img").first.wait_for(timeout=30_000)
                    w.shot("yolo-detect-example")
                    done.append("YOLO")

                if "Vision" in titles:  # an example picture and question; will the model fit?
                    w.tab("Vision")
                    w.example("vlm-examples")
                    assert page.get_by_placeholder(
                        "Ask about the picture and press Enter").input_value()
                    box = page.get_by_label("Model (hub id or local folder)")  # none offline:
                    box.fill("Qwen/Qwen2.5-VL-3B-Instruct")  # a catalogue model, not downloaded
                    box.press("Enter")
                    page.get_by_role("button", name="Will it fit?").first.click()
                    w.text(r"fits|does not fit|GiB", timeout=60)
                    w.shot("vision")
                    done.append("Vision")

                if "Models" in titles:
                    w.tab("Models")
                    page.get_by_role("button", name="Refresh", exact=True).last.click()
                    page.locator("#models-cards", has_text="SmolLM2").wait_for(timeout=60_000)
                    w.shot("models")
                    done.append("Models")

                if "Tiny GPT lab" in titles:
                    w.tab("Tiny GPT lab")
                    page.get_by_role("button", name="Preview corpus and tokenizer").click()
                    w.text(r"characters per token", timeout=120)
                    w.shot("tinygpt-preview")
                    done.append("Tiny GPT lab")

                if "QLoRA trainer" in titles:  # the example JSONL through "Check data"
                    w.tab("QLoRA trainer")
                    if page.locator("#qlora-examples").count():
                        w.example("qlora-examples")
                    else:  # the tab has no examples wired yet: upload the same file
                        page.locator("div.block:visible", has_text="Training data (JSONL").locator(
                            "input[type=file]").first.set_input_files(
                                asset("qlora", "instructions.jsonl"))
                        page.wait_for_timeout(1500)
                    page.get_by_role("button", name="Check data", exact=True).first.click()
                    w.text(r"\d+ usable of \d+", timeout=180)
                    w.shot("qlora-check")
                    done.append("QLoRA trainer")

                if "Stable Diffusion LoRA" in titles:
                    w.tab("Stable Diffusion LoRA")
                    page.get_by_role("button", name="Set up the CPU demo").click()
                    page.get_by_text("CPU demo mode.").first.wait_for(timeout=180_000)
                    w.shot("sd-demo")
                    done.append("Stable Diffusion LoRA")

                if "Whisper fine-tune" in titles:
                    w.tab("Whisper fine-tune")
                    w.shot("whisper-ft")
                    done.append("Whisper fine-tune")
            except Exception:  # where the walk stopped, for the CI artifact
                page.screenshot(path=str(ARTIFACTS / "walk-failed.png"), full_page=True)
                raise
    out = capfd.readouterr()
    log = out.out + out.err
    assert not errors, errors
    assert "Traceback" not in log, log[log.find("Traceback") - 500:][:4000]
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not logged, [(r.name, r.getMessage()) for r in logged]
    assert done == [t for t in ["Chat", "RAG", "Transcribe", "YOLO", "Vision", "Models",
                                "Tiny GPT lab", "QLoRA trainer", "Stable Diffusion LoRA",
                                "Whisper fine-tune"] if t in titles], done
