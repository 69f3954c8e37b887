"""Aspect-ratio buckets: wide and tall images keep their shape in a bucket of about the training
area, the preview says which bucket, and training draws each batch from one bucket (also with
prior preservation, whose class images are square)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tabs.sd.dataset import load_dataset, make_buckets, prepare_dataset


def _img(path, w, h, seed=0):
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def test_mixed_aspect_images_land_in_the_expected_buckets(tmp_path):
    assert make_buckets(512) == [(512, 512), (576, 448), (448, 576), (640, 384), (384, 640)]
    shapes = {"wide.png": (700, 500), "tall.png": (500, 700), "banner.png": (1600, 900),
              "strip.png": (1500, 500), "square.png": (600, 600), "portrait.png": (300, 520)}
    files = [_img(tmp_path / n, w, h, i) for i, (n, (w, h)) in enumerate(shapes.items())]
    ds = prepare_dataset(files, tmp_path / "out", size=512, instance_prompt="sks",
                         buckets=True)
    got = {it.source: it.bucket for it in ds.items}
    assert got == {"wide.png": (576, 448), "tall.png": (448, 576), "banner.png": (640, 384),
                   "strip.png": (640, 384), "square.png": (512, 512),
                   "portrait.png": (384, 640)}
    for it in ds.items:  # the files on disk are the bucket's size
        with Image.open(ds.folder / it.file_name) as im:
            assert im.size == it.bucket
    assert "buckets around 512x512" in ds.report() and "640x384: 2" in ds.report()
    back = load_dataset(ds.folder)  # what the training job reads
    assert back.buckets and back.size == 512
    assert {it.source: it.bucket for it in back.items} == got

    plain = prepare_dataset(files, tmp_path / "plain", size=512, instance_prompt="sks")
    assert not plain.buckets and {it.bucket for it in plain.items} == {(512, 512)}


def test_batches_come_from_one_bucket():
    torch = pytest.importorskip("torch")
    from tabs.sd.train import draw_batch

    groups = [[0, 3], [1, 2, 4], [5]]
    seen = set()
    for s in range(60):
        idx = draw_batch(groups, 6, 4, torch.Generator().manual_seed(s))
        home = [g for g in groups if idx[0] in g][0]
        assert len(idx) == 4 and all(i in home for i in idx)
        seen.add(tuple(home))
    assert len(seen) == 3  # every bucket gets its turn


def test_short_training_run_with_buckets_and_prior_preservation(tmp_path):
    pytest.importorskip("torch")
    from studio.reporting import Reporter, read_events
    from tabs.sd.tiny import make_tiny_sd15
    from tabs.sd.train import run

    base = make_tiny_sd15(tmp_path / "base")
    files = [_img(tmp_path / f"w{i}.png", 60, 36, i) for i in range(2)]
    files += [_img(tmp_path / f"t{i}.png", 36, 60, 5 + i) for i in range(2)]
    files += [_img(tmp_path / "s.png", 40, 40, 9)]
    ds = prepare_dataset(files, tmp_path / "ds", size=32, instance_prompt="sks toy",
                         min_side=16, buckets=True)
    assert sorted({it.bucket for it in ds.items}) == [(24, 40), (32, 32), (40, 24)]
    cfg = dict(base_model=str(base), dataset_dir=str(ds.folder), output_name="bk",
               lora_library=str(tmp_path / "lib"), class_cache=str(tmp_path / "cache"),
               resolution=32, rank=4, max_steps=6, batch_size=2, learning_rate=5e-3,
               prior_preservation=True, class_prompt="a toy", num_class_images=1,
               sample_every=0, checkpoint_every=0, sample_steps=2)
    report = Reporter(tmp_path / "run")
    run(cfg, report)
    report.close()
    ev = read_events(tmp_path / "run")
    metrics = [e for e in ev if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(m["train_loss"]) and m["prior_loss"] > 0 for m in metrics)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "aspect-ratio buckets: 40x24 (2 images)" in log
    assert (tmp_path / "lib" / "bk.safetensors").exists()


def test_smart_crop_keeps_the_detailed_part(tmp_path):
    """A product at the right edge of a flat wide photo: center crop cuts it off, smart keeps it."""
    arr = np.full((120, 360, 3), 200, np.uint8)
    arr[20:100, 280:350] = np.random.default_rng(1).integers(0, 255, (80, 70, 3))
    path = tmp_path / "product.png"
    Image.fromarray(arr).save(path)
    center = prepare_dataset([path], tmp_path / "c", size=64, instance_prompt="sks",
                             min_side=32)
    smart = prepare_dataset([path], tmp_path / "s", size=64, instance_prompt="sks",
                            min_side=32, crop="smart")

    def detail(ds):
        with Image.open(ds.folder / ds.items[0].file_name) as im:
            assert im.size == (64, 64)
            return float(np.asarray(im, dtype=np.float32).std())

    assert detail(center) < 1.0  # only the flat background is left
    assert detail(smart) > 30.0  # the product is in the crop
    assert load_dataset(smart.folder).crop == "smart"
    with pytest.raises(ValueError, match="crop must be"):
        prepare_dataset([path], tmp_path / "x", size=64, crop="face")
