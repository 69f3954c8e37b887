"""SD tab: dataset preparation, config checks, the memory arithmetic (no models)."""

from __future__ import annotations

import ast
import csv
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tabs.sd.config import GiB, SDTrainConfig, estimate_training, plan_generation
from tabs.sd.dataset import load_dataset, prepare_dataset, update_captions


def _img(path: Path, size=(700, 500), color=(200, 30, 30)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def test_prepare_captions_crop_and_per_file_reasons(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    a = _img(src / "a.jpg")
    (src / "a.txt").write_text("  a red   sks bag \n")
    b = _img(src / "b.png", (400, 900), (0, 0, 255))
    c = _img(src / "c.png", (600, 600))
    with open(src / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "caption"])
        w.writerow(["b.png", "a blue sks bag"])
    tiny = _img(src / "tiny.png", (40, 40))
    bad = src / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    doc = src / "notes.pdf"
    doc.write_bytes(b"%PDF")
    zpath = tmp_path / "more.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.write(_img(tmp_path / "z.webp", (800, 600)), "folder/z.webp")
    files = [a, src / "a.txt", b, c, src / "captions.csv", tiny, bad, doc, zpath]

    ds = prepare_dataset(files, tmp_path / "out", size=512, instance_prompt="a photo of sks bag")

    by_source = {it.source: it for it in ds.items}
    assert by_source["a.jpg"].text == "a red sks bag"  # sidecar, whitespace tidied
    assert by_source["b.png"].text == "a blue sks bag"  # CSV row
    assert by_source["c.png"].text == "a photo of sks bag"  # instance prompt
    assert "z.webp" in by_source  # unpacked from the zip
    for it in ds.items:
        with Image.open(ds.folder / it.file_name) as im:
            assert im.size == (512, 512)
    reasons = {s.name: s.reason for s in ds.skipped}
    assert "too small" in reasons["tiny.png"]
    assert "not a readable image" in reasons["broken.jpg"]
    assert "not an image" in reasons["notes.pdf"]
    assert "skipped tiny.png" in ds.report()
    # the crop is centered: a tall blue image stays blue in the middle
    with Image.open(ds.folder / by_source["b.png"].file_name) as im:
        assert im.getpixel((256, 256)) == (0, 0, 255)


def test_no_caption_is_reported_and_captions_can_be_edited(tmp_path):
    a = _img(tmp_path / "a.png")
    b = _img(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("sks")
    ds = prepare_dataset([a, b, tmp_path / "b.txt"], tmp_path / "out", size=256)
    assert [s.name for s in ds.skipped] == ["a.png"]
    assert "no caption" in ds.skipped[0].reason
    update_captions(ds.folder, {ds.items[0].file_name: "sks, edited"})
    assert load_dataset(ds.folder).items[0].text == "sks, edited"
    with pytest.raises(ValueError, match="empty"):
        update_captions(ds.folder, {ds.items[0].file_name: "  "})


def test_config_rejects_bad_settings_with_reasons():
    with pytest.raises(ValueError, match="class prompt"):
        SDTrainConfig(prior_preservation=True).validate()
    with pytest.raises(ValueError, match="rank"):
        SDTrainConfig(rank=0).validate()
    with pytest.raises(ValueError, match="unknown"):
        SDTrainConfig.from_dict({"nope": 1})


def test_estimate_turns_checkpointing_on_only_when_needed():
    cfg = SDTrainConfig()
    roomy = estimate_training(cfg, 12 * GiB)
    assert roomy.fits and not roomy.gradient_checkpointing
    tight = estimate_training(cfg, int(3.2 * GiB))
    assert tight.gradient_checkpointing and tight.fits
    assert tight.total < roomy.total
    assert "does NOT fit" in estimate_training(SDTrainConfig(batch_size=8), 3 * GiB).describe()
    # prior preservation doubles the samples per step
    assert estimate_training(SDTrainConfig(prior_preservation=True, class_prompt="a dog"),
                             40 * GiB).total > roomy.total


def test_sdxl_memory_plan_follows_the_budget():
    big = plan_generation("sdxl", 40 * GiB, "cuda")
    assert not big.cpu_offload and not big.vae_tiling and big.fp16_vae
    card = plan_generation("sdxl", 12 * GiB, "cuda", batch=2)
    assert not card.cpu_offload and card.vae_slicing
    small = plan_generation("sdxl", 6 * GiB, "cuda")
    assert small.cpu_offload and small.vae_tiling
    assert "offload" in small.describe()
    sd15 = plan_generation("sd15", 12 * GiB, "cuda")
    assert sd15.compile_unet and sd15.fuse_qkv and not sd15.cpu_offload
    assert plan_generation("sd15", 12 * GiB, "cpu").dtype == "fp32"


def test_logic_modules_do_not_import_gradio():
    folder = Path(__file__).resolve().parents[2] / "tabs" / "sd"
    for path in folder.glob("*.py"):
        if path.name == "ui.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "gradio" for n in names), path.name


def test_epochs_become_steps_when_queued():
    from tabs.sd.config import SDTrainConfig, steps_for_epochs

    assert steps_for_epochs(10, n_images=25, batch_size=2, grad_accumulation=2) == 63  # 250/4
    assert steps_for_epochs(1, n_images=3, batch_size=4, grad_accumulation=1) == 1
    with pytest.raises(ValueError, match="Epochs must be between 0 and"):
        SDTrainConfig(epochs=-1).validate()
