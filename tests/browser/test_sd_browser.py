"""The Stable Diffusion tab in headless Chromium, the way a person without a model uses it:
the page says what to do when no base model is on disk and lists the models folder's
checkpoints after a reload; preparation warns about small images, the thumbnails keep their
bucket's shape, the file column cannot be edited and the toast counts the saved captions; and
the CPU demo mode runs prepare -> train -> download the LoRA -> generate with it on a CPU.
Screenshots go to tests/artifacts/ (or $STUDIO_ARTIFACTS)."""

from __future__ import annotations

import json
import re
import struct
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from tests.browser.chromium import ARTIFACTS, needs_chromium, running_studio, studio_page

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs_chromium]


@contextmanager
def _open(url):
    """The SD tab's page, once its Train sub-tab is there; yields (page, errors)."""
    with studio_page(url, height=1100, accept_downloads=True) as (_browser, page, errors):
        page.get_by_role("tab", name="Train").first.wait_for(timeout=30_000)
        yield page, errors


def _visible(page, label: str):
    """The control labelled `label` on the sub-tab shown (Train and Generate share labels)."""
    return page.locator(f"[aria-label='{label}']:visible").first


def _dropdown_options(page, label: str) -> list[str]:
    _visible(page, label).click()
    page.get_by_role("option").first.wait_for(timeout=10_000)
    names = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    return names


def test_no_base_model_says_what_to_do_and_the_models_folder_is_listed(tmp_path):
    from tabs.sd import service
    from tabs.sd.tiny import make_tiny_sd15, save_original_single_file

    with running_studio(tmp_path / "home", tab_modules=["tabs.sd"]) as (s, url):
        with _open(url) as (page, errors):
            page.get_by_text("No base model on disk yet").first.wait_for(timeout=30_000)
            note = page.locator(".sd-base-note").first.inner_text()
            assert "Models tab" in note and "Download" in note, note
            assert "no offline weights" in note  # the profile's own note
            assert str(service.checkpoints_dir(s)) in note and "CPU demo" in note
            page.screenshot(path=str(ARTIFACTS / "sd-no-base-model.png"), full_page=True)

            # a user drops a checkpoint file and a diffusers folder in, then reloads the page
            root = service.checkpoints_dir(s)
            folder = make_tiny_sd15(root / "my-sd15")
            save_original_single_file(folder, root / "civitai-style.safetensors")
            page.reload(wait_until="load")
            page.get_by_role("tab", name="Train").first.wait_for(timeout=30_000)
            page.wait_for_timeout(1500)
            options = _dropdown_options(page, "Base model")
            assert any("civitai-style.safetensors" in o for o in options), options
            assert any("my-sd15" in o for o in options), options
            assert page.get_by_text("No base model on disk yet").count() == 0
            page.get_by_role("tab", name="Generate").click()
            options = _dropdown_options(page, "Base model")
            assert any("civitai-style.safetensors" in o for o in options), options
    assert not errors, errors


def test_preparation_warns_shows_bucket_shapes_and_guards_the_file_column(tmp_path):
    from tabs.sd.dataset import load_dataset

    wide, small = tmp_path / "wide.png", tmp_path / "small.png"
    Image.fromarray(np.full((600, 1200, 3), 120, np.uint8)).save(wide)
    Image.fromarray(np.full((300, 300, 3), 60, np.uint8)).save(small)
    with running_studio(tmp_path / "home", tab_modules=["tabs.sd"]) as (s, url):
        with _open(url) as (page, errors):
            page.get_by_role("button", name="Prepare dataset").wait_for(timeout=30_000)
            page.wait_for_load_state("load")
            page.wait_for_timeout(2000)  # the upload box wires its handlers after it renders
            upload = page.locator("input[type=file]").first
            for _attempt in range(3):
                upload.set_input_files([str(wide), str(small)])
                try:
                    page.get_by_text("small.png").first.wait_for(timeout=30_000)
                    break
                except Exception:
                    continue
            page.get_by_label("Instance prompt (for images without a caption)").fill("sks thing")
            page.get_by_label("Aspect-ratio buckets").check()
            page.get_by_role("button", name="Prepare dataset").click()
            page.get_by_text("2 images ready in aspect-ratio buckets").first \
                .wait_for(timeout=60_000)
            page.wait_for_timeout(1500)
            problems = []  # every item is checked, so one run shows all that is wrong
            # a toast and the report: the 300 px image was enlarged to 512
            if not page.locator(".toast-body", has_text="smaller than the training size").count():
                problems.append("no warning toast about the enlarged 300 px image")
            report = page.locator(".prose", has_text="smaller than the training size")
            if not report.count() or "small.png" not in report.first.inner_text():
                problems.append("the report does not name the enlarged image")
            gallery = page.locator(".block", has=page.get_by_text("Prepared images",
                                                                   exact=True)).last
            thumbs = gallery.locator("img").evaluate_all(
                "imgs => imgs.map(i => [getComputedStyle(i).objectFit, i.naturalWidth,"
                " i.naturalHeight])")
            # the wide image's thumbnail shows its 640x384 bucket, not a square crop of it
            if not thumbs or any(fit != "contain" for fit, _, _ in thumbs):
                problems.append(f"thumbnails crop the bucket shapes away: {thumbs}")
            elif sorted((w, h) for _, w, h in thumbs) != [(512, 512), (640, 384)]:
                problems.append(f"thumbnails are not the prepared images: {thumbs}")
            page.screenshot(path=str(ARTIFACTS / "sd-prepared.png"), full_page=True)

            folder = page.get_by_label("Prepared dataset folder").input_value()
            table = page.locator(".table-wrap[role='grid']").first
            file_cell = table.locator("[data-testid='cell-0-0']")
            before = file_cell.inner_text().strip()
            assert re.fullmatch(r"\d{4}\.png", before)
            file_cell.dblclick()
            page.keyboard.type("renamed")
            page.keyboard.press("Enter")
            page.wait_for_timeout(500)
            if file_cell.inner_text().strip() != before:
                problems.append(f"the file column is editable: {file_cell.inner_text()!r}")
                page.keyboard.press("Escape")

            cap = table.locator("[data-testid='cell-1-2']")
            cap.dblclick()
            page.keyboard.press("Control+A")
            page.keyboard.type("sks thing, edited")
            page.keyboard.press("Enter")
            page.wait_for_timeout(500)
            page.get_by_role("button", name="Save captions").click()
            try:
                page.locator(".toast-body", has_text="Saved 2 captions (1 changed)").first \
                    .wait_for(timeout=30_000)
            except Exception:
                problems.append("no toast counting the saved and changed captions: " +
                                " | ".join(page.locator(".toast-body").all_inner_texts()))
        assert not problems, problems
        texts = sorted(it.text for it in load_dataset(folder).items)
        assert texts == ["sks thing", "sks thing, edited"]
    assert not errors, errors


def test_cpu_demo_mode_trains_and_generates_on_a_cpu(tmp_path):
    """The walk-through a person without a GPU or a model can do: a few minutes on a CPU."""
    with running_studio(tmp_path / "home", tab_modules=["tabs.sd"]) as (s, url):
        with _open(url) as (page, errors):
            page.get_by_role("button", name="Set up the CPU demo").click()
            page.get_by_text("CPU demo mode.").first.wait_for(timeout=120_000)
            page.get_by_text("4 images ready at 32x32").first.wait_for(timeout=10_000)
            assert "CPU demo" in _visible(page, "Base model").input_value()
            page.get_by_role("button", name="Start training").click()
            status = page.get_by_text(re.compile(r"SD LoRA demo_lora .* succeeded")).first
            try:
                status.wait_for(timeout=300_000)
            finally:
                page.screenshot(path=str(ARTIFACTS / "sd-demo-trained.png"), full_page=True)
            page.locator("#sd-samples img").first.wait_for(timeout=30_000)

            # the trained LoRA downloads from the page, as a real .safetensors file
            link = page.locator("a[download='demo_lora.safetensors']").first
            link.wait_for(timeout=30_000)
            with page.expect_download(timeout=30_000) as dl:
                link.click()
            data = open(dl.value.path(), "rb").read()
            (n,) = struct.unpack("<Q", data[:8])
            header = json.loads(data[8:8 + n])
            assert any("lora" in k for k in header), list(header)[:5]

            page.get_by_role("tab", name="Generate").click()
            assert "CPU demo" in _visible(page, "Base model").input_value()
            _visible(page, "LoRA 1").click()
            page.get_by_role("option", name=re.compile(r"^demo_lora")).first.click()
            page.get_by_role("button", name="Generate", exact=True).click()
            page.get_by_text("Memory plan").first.wait_for(timeout=120_000)
            page.locator("#sd-images img").first.wait_for(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "sd-demo-generated.png"), full_page=True)
        saved = sorted((s.settings.exports_dir / "sd_images").glob("*.png"))
        assert saved
        from tabs.sd.generate import read_png_parameters

        assert "demo_lora" in read_png_parameters(saved[-1])["loras"]
    assert not errors, errors
