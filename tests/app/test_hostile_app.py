"""Hostile input through the public API (gradio_client), as a stranger with a shared link would
send it: every case gets a message that says what is wrong, never a bare "Error", and nothing
is queued or written outside the home."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.canary import write_canary_pickle
from tests.conftest import launch_studio, stop_studio

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from gradio_client import Client

    home = tmp_path_factory.mktemp("hostile") / "home"
    s, app, url = launch_studio(home, tab_modules=["tabs.yolo", "tabs.sd", "tabs.qlora"])
    yield Client(url, verbose=False), s, home
    stop_studio(s, app)


def _message(c, *args, api_name):
    with pytest.raises(Exception) as e:  # gradio_client raises AppError with the message
        c.predict(*args, api_name=api_name)
    text = str(e.value)
    assert text.strip() not in ("", "Error", "None"), f"{api_name}: bare error"
    return text


def test_hostile_values_over_the_api_get_reasons(client, tmp_path):
    from gradio_client import handle_file

    c, s, home = client
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8)).save(img)
    c.predict("parts", "bolt", api_name="/yolo_create_dataset")
    c.predict("parts", [handle_file(str(img))], False, api_name="/yolo_add_files")

    box = [{"label": "bolt", "xmin": 1, "ymin": 1, "xmax": 20, "ymax": 20}]
    assert "pick an image" in _message(c, "parts", "", json.dumps(box),
                                       api_name="/yolo_set_boxes")
    assert "finite" in _message(c, "parts", "a.png", json.dumps(
        [{"label": "bolt", "xmin": "nan", "ymin": 1, "xmax": 5, "ymax": 5}]),
        api_name="/yolo_set_boxes")
    assert "outside the 60x40 image" in _message(c, "parts", "a.png", json.dumps(
        [{"label": "bolt", "xmin": 500, "ymin": 500, "xmax": 600, "ymax": 600}]),
        api_name="/yolo_set_boxes")
    assert "missing xmin" in _message(c, "parts", "a.png", json.dumps([{"label": "bolt"}]),
                                      api_name="/yolo_set_boxes")
    assert c.predict("parts", "a.png", api_name="/yolo_get_boxes")["labelled"] is False

    # YOLO Train: the image size past any real one, and a trapped .pt as the model.
    args = ["parts", "yolov8n.yaml", 1, 320_000_000, 2, 5, 0, False, 0.0, 0.0, False, False]
    assert "Image size must be between 32 and 1920" in _message(c, *args,
                                                                api_name="/yolo_train")
    canary = tmp_path / "CANARY"
    evil = write_canary_pickle(home / "uploads" / "x" / "yolov8n.pt", canary)
    args[1], args[3] = str(evil), 64
    assert "pickle" in _message(c, *args, api_name="/yolo_train")
    assert not canary.exists()
    assert s.jobs.list_runs("yolo") == []  # nothing was queued

    # SD: captions of a folder outside the home, a LoRA name that is a path.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n')
    assert "outside the studio home" in _message(
        c, str(outside), {"headers": ["file", "image", "caption"],
                          "data": [["a.png", "", "hacked"]]}, api_name="/sd_save_captions")
    assert "hacked" not in (outside / "metadata.jsonl").read_text()

    # QLoRA: a 1e9 rank is refused with the field's name before anything is queued.
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    from tabs.qlora.config import default_of
    from tabs.qlora.ui import SETTINGS

    names = ["base_model", "gguf_file", "train_file", "eval_file", "eval_fraction",
             "max_seq_length", "skip_bad_records", "train_on_prompt", *SETTINGS]
    values = {n: default_of(n) for n in names}
    values.update(base_model="org/model", train_file=handle_file(str(train)), eval_file=None,
                  lora_r=10**9)
    assert "LoRA rank must be between 1 and 1024" in _message(
        c, *[values[n] for n in names], api_name="/qlora_estimate")
    values.update(lora_r=8, target_modules="../../x;rm -rf /")
    assert "target modules must be" in _message(c, *[values[n] for n in names],
                                                api_name="/qlora_estimate")
