"""Headless Chromium on the YOLO tab, the way a person uses it (issue 24): boxes drawn with the
mouse, class hotkeys, training, detection on an uploaded image; and the Label page's small
things (reload, pre-label without a model, the `d` key, Save classes, pop-up classes).
Screenshots go to tests/artifacts/ (or $STUDIO_ARTIFACTS)."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest

from tests.browser.chromium import (
    ARTIFACTS,
    TOAST_SPY,
    needs_chromium,
    running_studio,
    studio_page,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs_chromium]

SIZE = 256  # image pixels; shown 1:1 on the canvas (narrower than the page)


def _images(tmp_path, n, seed=0):
    from tabs.yolo.synthetic import draw_sample

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img, boxes = draw_sample(rng, size=SIZE, max_objects=2)
        p = tmp_path / f"img{i}.png"
        img.save(p)
        out.append((p, boxes))
    return out


def _page_dataset(s, name):
    """The dataset `name` the page made: its browser's own (each owner has its own store)."""
    from tabs.yolo.dataset import Dataset
    from tabs.yolo.service import get_service

    found = list((get_service(s).home / "owned").glob(f"*/{name}/dataset.json"))
    assert len(found) == 1, found
    return Dataset(found[0].parent)


def _create_dataset(page, name):
    """Make a circle/square dataset with the Label page's own Create button."""
    page.get_by_label("New dataset name").fill(name)
    page.get_by_label("Classes (one per line", exact=False).fill("circle\nsquare")
    page.get_by_role("button", name="Create", exact=True).click()
    page.get_by_text("No classes yet").wait_for(state="detached", timeout=15_000)


def _error_toasts(page):
    return [t for t in page.evaluate("window.__toasts") if "error" in t[0].split()]


def _canvas_origin(page):
    """Page coordinates of the image's top-left pixel on the canvas (drawn 1:1, centred)."""
    box = page.locator("#yolo-annot canvas").first.bounding_box()
    return box["x"] + (box["width"] - SIZE) / 2, box["y"]


def _drag(page, origin, b):
    x0, y0 = origin
    page.mouse.move(x0 + b.x1 + 1, y0 + b.y1 + 1)
    page.mouse.down()
    for k in range(1, 6):
        page.mouse.move(x0 + b.x1 + (b.x2 - b.x1) * k / 5, y0 + b.y1 + (b.y2 - b.y1) * k / 5)
    page.mouse.up()
    page.wait_for_timeout(1200)  # the save (and the class fix-up) round trip


def _visible(page, label):
    """The visible input labelled `label` (each sub-tab has its own 'Dataset', 'Image', ...)."""
    return page.locator(f"[aria-label='{label}']:visible").first


def _pick(page, label, option):
    _visible(page, label).click()
    page.get_by_role("option", name=option).first.click()
    page.wait_for_timeout(500)


def _iou(a, b):
    ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    return inter / ((a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter)


@contextmanager
def _open(url):
    """The YOLO tab's page with the toast spy; yields (page, errors)."""
    with studio_page(url, height=1400, init_script=TOAST_SPY) as (_browser, page, errors):
        page.get_by_text("OneGPU Studio").first.wait_for(timeout=30_000)
        tab = page.get_by_role("tab", name="YOLO")
        if tab.count():
            tab.first.click()
        page.wait_for_timeout(2500)  # the page-load fills (selectors after a reload) land first
        yield page, errors


def test_label_three_images_with_the_mouse_train_and_detect_an_upload(tmp_path):
    shots = _images(tmp_path, 4)
    with running_studio(tmp_path / "home", tab_modules=["tabs.yolo"]) as (s, url):
        with _open(url) as (page, errors):
            _create_dataset(page, "walk")
            page.get_by_text("Add images or import a dataset").click()
            page.locator("#yolo-uploads input[type=file]").set_input_files([str(f) for f, _ in
                                                                    shots[:3]])
            page.wait_for_timeout(1500)
            page.get_by_role("button", name="Add to dataset").click()
            page.get_by_text("0 of 3 labelled").wait_for(timeout=30_000)
            page.locator('[aria-label="Create box"]').first.click()  # the canvas' draw mode
            ds = _page_dataset(s, "walk")
            for i, (_path, boxes) in enumerate(shots[:3]):
                name = ds.images()[i]
                page.wait_for_timeout(1000)  # the image loads into the canvas
                origin = _canvas_origin(page)
                for b in boxes:
                    page.keyboard.press(str(b.cls + 1))  # class hotkey: 1 circle, 2 square
                    _drag(page, origin, b)
                page.screenshot(path=str(ARTIFACTS / f"yolo-label-{i}.png"), full_page=True)
                saved = ds.boxes(name)
                assert saved is not None and len(saved) == len(boxes), (name, saved, boxes)
                for want in boxes:  # every box saved where it was drawn, with its class
                    best = max(saved, key=lambda g, w=want: _iou(g, w))
                    assert _iou(best, want) > 0.8 and best.cls == want.cls, (best, want)
                page.keyboard.press("d")  # next image (the canvas has the focus)
            page.get_by_text("3 of 3 labelled").wait_for(timeout=15_000)
            page.get_by_role("button", name="Split train/val").click()
            page.get_by_text("Split:").wait_for(timeout=15_000)

            page.get_by_role("tab", name="Train").click()
            _pick(page, "Dataset", "walk")
            for label, value in (("Epochs", "2"), ("Image size", "128"), ("Batch", "3")):
                _visible(page, label).fill(value)
            page.get_by_role("button", name="Start training").click()
            page.get_by_text("succeeded").first.wait_for(timeout=300_000)
            assert page.get_by_text("Accuracy (val)").count() >= 1  # mAP on its own plot
            page.wait_for_timeout(2500)  # a timer tick renews the picker's labels
            run_label = _visible(page, "Run").input_value()
            assert "succeeded" in run_label and "running" not in run_label, run_label
            page.screenshot(path=str(ARTIFACTS / "yolo-trained.png"), full_page=True)

            page.get_by_role("tab", name="Detect").click()
            _visible(page, "Model (trained here)").click()
            page.get_by_role("option").filter(has_text="best.pt").first.click()
            page.locator("#yolo-detect-input input[type=file]").set_input_files(
                str(shots[3][0]))
            page.wait_for_timeout(1500)
            page.get_by_role("button", name="Detect", exact=True).click()
            page.locator("#yolo-detect-output img").first.wait_for(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "yolo-detect.png"), full_page=True)
            assert page.get_by_text("Add an image").count() == 0
            toasts = _error_toasts(page)
    assert not errors, errors
    assert not toasts, toasts  # no "box has no area" on mouse-down, nor any other error


def test_label_page_after_a_reload_and_its_small_things(tmp_path):
    shots = _images(tmp_path, 2, seed=3)
    with running_studio(tmp_path / "home", tab_modules=["tabs.yolo"]) as (s, url):
        with _open(url) as (page, errors):
            # the page's own dataset (a shared one is read-only in the pages), its images
            # added behind the page's back
            _create_dataset(page, "kept")
            ds = _page_dataset(s, "kept")
            for f, _ in shots:
                ds.add_image(f)
            first, second = ds.images()
            page.reload(wait_until="load")
            page.get_by_text("OneGPU Studio").first.wait_for(timeout=30_000)
            if page.get_by_role("tab", name="YOLO").count():
                page.get_by_role("tab", name="YOLO").first.click()
            # After a reload the dataset is selected again, and with it the first image.
            page.get_by_text("0 of 2 labelled").wait_for(timeout=20_000)
            assert page.get_by_label("Dataset", exact=True).first.input_value() == "kept"
            assert page.get_by_label("Image", exact=True).first.input_value() == first

            # Pre-label without a model: a warning, no red "Error" badge on the canvas.
            page.get_by_role("button", name="Pre-label").click()
            page.get_by_text("Pre-label needs a model").first.wait_for(timeout=15_000)
            assert page.locator("#yolo-annot").get_by_text("Error").count() == 0

            # `d` with the canvas focused goes to the next image (not the canvas' drag mode).
            page.locator("#yolo-annot canvas").first.click()
            page.keyboard.press("d")
            page.wait_for_timeout(1500)
            assert page.get_by_label("Image", exact=True).first.input_value() == second

            # A class typed in the box pop-up shows up in the Classes box (and the picker).
            from tabs.yolo.formats import Box

            page.locator('[aria-label="Create box"]').first.click()
            origin = _canvas_origin(page)
            _drag(page, origin, Box(0, 30, 30, 120, 120))
            page.locator('[aria-label="Drag boxes"]').first.click()
            page.mouse.dblclick(origin[0] + 75, origin[1] + 75)
            popup_label = page.locator("[aria-label='Label']:visible").first
            popup_label.fill("cat")
            popup_label.press("Enter")
            page.wait_for_timeout(300)
            ok = page.get_by_role("button", name="OK", exact=True)
            if ok.count() and ok.first.is_visible():
                ok.first.click()
            page.wait_for_timeout(2000)
            assert "cat" in page.get_by_label("Classes (one per line", exact=False).input_value()
            assert page.locator("#yolo-class input[type=radio]").count() == 3
            assert [ds.classes[b.cls] for b in ds.boxes(second)] == ["cat"]

            # The current class is on screen and follows the hotkeys.
            page.keyboard.press("2")
            assert page.locator("#yolo-class input[type=radio]").nth(1).is_checked()
            assert page.locator("#yolo-legend").inner_text().count("circle") == 1
            page.keyboard.press("3")
            assert page.locator("#yolo-class input[type=radio]").nth(2).is_checked()

            # Save classes answers where the button is, not in a closed section.
            box = page.get_by_label("Classes (one per line", exact=False)
            box.fill("circle\nsquare\ncat\ntriangle")
            page.get_by_role("button", name="Save classes").click()
            msg = page.get_by_text("Saved classes: circle, square, cat, triangle")
            msg.wait_for(timeout=15_000)
            assert msg.is_visible()
            assert page.locator("#yolo-class input[type=radio]").count() == 4
            page.screenshot(path=str(ARTIFACTS / "yolo-label-page.png"), full_page=True)
            toasts = _error_toasts(page)
    assert not errors, errors
    assert not toasts, toasts
    assert ds.classes == ["circle", "square", "cat", "triangle"]
