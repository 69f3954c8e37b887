"""Which base models the SD tab offers (the Models tab's downloads, the models folder's
checkpoints as ComfyUI and A1111 keep them, the CPU demo) and what it says when there is none;
the dataset's size warning and caption saving."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image


def test_models_folder_lists_files_and_folders_per_architecture(studio, tmp_path):
    from safetensors.numpy import save_file

    from tabs.sd import service
    from tabs.sd.tiny import make_tiny_sd15, save_original_single_file

    root = service.checkpoints_dir(studio)
    assert not service.base_options(studio, "sd15")
    note = service.base_note(studio, "sd15")
    assert "No base model on disk yet" in note and "Models" in note and str(root) in note
    assert "no offline weights" in note  # the small profile's own note reaches the page
    assert "CPU demo" in note

    folder = make_tiny_sd15(root / "my-sd15")
    save_original_single_file(folder, root / "civitai-style.safetensors")
    save_file({"lora_unet_x.lora_down.weight": np.zeros((4, 4), np.float32)},
              str(root / "some_lora.safetensors"))  # not a base model: left out
    xl = root / "my-xl"
    xl.mkdir()
    (xl / "model_index.json").write_text(json.dumps({"_class_name":
                                                     "StableDiffusionXLPipeline"}))
    (root / "notes.txt").write_text("x")
    sd15 = dict((v, k) for k, v in service.base_options(studio, "sd15"))
    assert set(sd15) == {str(root / "civitai-style.safetensors"), str(root / "my-sd15")}
    assert "models/checkpoints" in sd15[str(root / "my-sd15")]
    assert service.base_choices(studio, "sdxl") == [str(xl)]
    assert "No base model" not in service.base_note(studio, "sd15")


def test_dataset_warns_when_an_image_is_enlarged(tmp_path):
    from tabs.sd.dataset import prepare_dataset

    paths = []
    for name, wh in (("tiny.png", (200, 150)), ("fine.png", (600, 520)),
                     ("wide.png", (600, 200))):
        Image.fromarray(np.full((wh[1], wh[0], 3), 100, np.uint8)).save(tmp_path / name)
        paths.append(tmp_path / name)
    ds = prepare_dataset(paths, tmp_path / "out", size=512, instance_prompt="sks",
                         min_side=100)
    assert len(ds.items) == 3 and len(ds.warnings) == 1
    w = ds.warnings[0]
    assert "2 of 3 images are smaller than the training size (512 px)" in w
    assert "tiny.png" in w and "wide.png" in w and "fine.png" not in w
    assert w in ds.report()
    ok = prepare_dataset(paths[1:2], tmp_path / "out2", size=512, instance_prompt="sks")
    assert not ok.warnings
    # buckets: a wide 640x400 image fits its 640x384 bucket without enlarging
    Image.fromarray(np.full((400, 640, 3), 100, np.uint8)).save(tmp_path / "b.png")
    bk = prepare_dataset([tmp_path / "b.png"], tmp_path / "out3", size=512,
                         instance_prompt="sks", buckets=True)
    assert bk.items[0].bucket == (640, 384) and not bk.warnings


def test_caption_save_refuses_unknown_files_and_counts_changes(tmp_path):
    from tabs.sd.dataset import load_dataset, prepare_dataset, update_captions

    paths = []
    for i in range(3):
        Image.fromarray(np.full((300, 300, 3), 50 * i, np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    ds = prepare_dataset(paths, tmp_path / "out", size=256, instance_prompt="sks")
    names = [it.file_name for it in ds.items]
    with pytest.raises(ValueError, match="x.png: not a file of this dataset"):
        update_captions(ds.folder, {"x.png": "new", names[1]: "sks, b"})
    assert [it.text for it in load_dataset(ds.folder).items] == ["sks"] * 3  # nothing written
    _ds, changed = update_captions(ds.folder, {names[0]: "sks", names[1]: "sks, b"})
    assert changed == 1
    assert [it.text for it in load_dataset(ds.folder).items] == ["sks", "sks, b", "sks"]
