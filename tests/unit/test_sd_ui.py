"""The SD tab through its public API (gradio_client against the launched app): prepare a
dataset from uploads, ask "will it fit?", generate with a tiny local base, and get clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import launch_studio, stop_studio


@pytest.fixture(scope="module")
def client_and_studio(tmp_path_factory):
    from gradio_client import Client

    s, app, url = launch_studio(tmp_path_factory.mktemp("sd_home"), tab_modules=["tabs.sd"])
    yield Client(url, verbose=False), s
    stop_studio(s, app)


def test_prepare_estimate_generate_and_errors(client_and_studio, tmp_path):
    from gradio_client import handle_file

    from tabs.sd.generate import read_png_parameters
    from tabs.sd.tiny import make_tiny_sd15

    client, s = client_and_studio
    good = tmp_path / "good.png"
    Image.fromarray(np.full((300, 400, 3), 128, np.uint8)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    folder, report, _gallery, captions = client.predict(
        files=[handle_file(str(good)), handle_file(str(bad))], instance="a photo of sks cat",
        size=256, api_name="/sd_prepare")
    assert "1 images ready at 256x256" in report and "bad.jpg" in report
    assert captions["data"][0][2] == "a photo of sks cat"
    _f, report, gallery, captions = client.predict(
        files=[handle_file(str(good))], instance="a photo of sks cat", size=256, buckets=True,
        api_name="/sd_prepare")  # a 400x300 image keeps its shape in the 320x192 bucket
    assert "buckets around 256x256" in report and captions["data"][0][3] == "320x192"
    assert gallery[0]["caption"].startswith("[320x192]")

    settings = [folder, "some/base", "mine", "sks", 256, 8, 8, 100, 1e-4, "constant", 0, 1, 1,
                "auto", "fp16", True, False, 42, 0.0, False, "", 100, 1.0, "", "", 100]
    estimate = client.predict(*settings, api_name="/sd_estimate")
    assert "Estimated peak" in estimate and "Gradient checkpointing" in estimate
    with pytest.raises(Exception, match="Prepare a dataset first"):
        client.predict("", *settings[1:], api_name="/sd_estimate")
    with pytest.raises(Exception, match="class prompt"):
        client.predict(*settings[:19], True, *settings[20:], api_name="/sd_train")

    base = make_tiny_sd15(tmp_path / "base")
    images, note = client.predict(arch_v="sd15", base_v=str(base), prompt_v="a cat", neg_v="",
                                  steps_v=2, guid_v=5, seed_v=5, w_v=32, h_v=32, b_v=1,
                                  sched_v="Euler", lora1=None, lora2=None, lora3=None,
                                  str1=1, str2=1, str3=1, api_name="/sd_generate")
    assert "Memory plan" in note and len(images) == 1
    saved = sorted((s.settings.exports_dir / "sd_images").glob("*.png"))
    assert read_png_parameters(saved[-1])["seed"] == "5"

    with pytest.raises(Exception, match="write a prompt"):
        client.predict(arch_v="sd15", base_v=str(base), prompt_v=" ", neg_v="", steps_v=2,
                       guid_v=5, seed_v=5, w_v=32, h_v=32, b_v=1, sched_v="Euler", lora1=None,
                       lora2=None, lora3=None, str1=1, str2=1, str3=1, api_name="/sd_generate")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"pickle")
    with pytest.raises(Exception, match="pickle checkpoint"):
        client.predict(arch_v="sd15", base_v=str(ckpt), prompt_v="a cat", neg_v="", steps_v=2,
                       guid_v=5, seed_v=5, w_v=32, h_v=32, b_v=1, sched_v="Euler", lora1=None,
                       lora2=None, lora3=None, str1=1, str2=1, str3=1, api_name="/sd_generate")
    assert client.predict(api_name="/sd_stop") == "Nothing is running."
