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


def _gen_kwargs(base, **kw):
    args = dict(arch_v="sd15", base_v=base, prompt_v="a cat", neg_v="", steps_v=2, guid_v=5,
                seed_v=5, w_v=32, h_v=32, b_v=1, sched_v="Euler", lora1=None, lora2=None,
                lora3=None, str1=1, str2=1, str3=1, api_name="/sd_generate")
    args.update(kw)
    return args


def _train_settings(folder, base):
    return [folder, base, "mine", "sks", 256, 4, 4, 5, 1e-3, "constant", 0, 1, 1, "off", "no",
            False, False, 42, 0.0, False, "", 100, 1.0, "", "", 0]


@pytest.mark.slow  # a fake hub, a download job and a training job: ~1-2 min on 2 cores
def test_a_hub_base_not_on_disk_fails_at_once_in_words_and_downloads_nothing(
        tmp_path, monkeypatch):
    """Generate and Start training with a hub id that is not on disk answer at once with the
    Models tab's words (today: a silent download inside the request, or a raw OSError); once
    the Models tab downloaded it, the same hub id draws and is listed in the dropdown."""
    import json
    import time

    from gradio_client import Client

    from tabs.models import service as models
    from tabs.sd import service
    from tabs.sd.dataset import prepare_dataset
    from tabs.sd.tiny import make_tiny_sd15
    from tests.fakehub import FakeHub, FakeRepo, point_client_at

    folder = make_tiny_sd15(tmp_path / "tiny")
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
             if p.is_file()}
    fake = FakeHub().start()
    fake.add(FakeRepo("demo/tiny-sd", files))
    point_client_at(monkeypatch, fake, tmp_path / "cache")
    s, app, url = launch_studio(tmp_path / "home", tab_modules=["tabs.sd", "tabs.models"])
    try:
        client = Client(url, verbose=False)
        t0 = time.monotonic()
        with pytest.raises(Exception, match=r"not on disk yet.*Models tab.*Download"):
            client.predict(**_gen_kwargs("demo/tiny-sd"))
        assert time.monotonic() - t0 < 30
        assert not [p for _, p, _ in fake.requests if "tiny-sd" in p], fake.requests
        assert not service.base_choices(s, "sd15")

        img = tmp_path / "a.png"
        Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(img)
        ds_folder = str(prepare_dataset([img], service.prepared_root(s) / "ds32", size=32,
                                        instance_prompt="sks", min_side=16).folder)
        with pytest.raises(Exception, match=r"not on disk yet.*Models tab"):
            client.predict(*_train_settings(ds_folder, "demo/tiny-sd"), api_name="/sd_train")
        assert not s.jobs.list_runs("sd")
        assert not [p for _, p, _ in fake.requests if "tiny-sd" in p]

        run_id, _msg = models.download(s, "sd", "demo/tiny-sd")  # what the Models tab does
        assert s.jobs.wait(run_id, 120).status == "succeeded"
        assert "demo/tiny-sd" in service.base_choices(s, "sd15")
        asked = len(fake.requests)
        images, note = client.predict(**_gen_kwargs("demo/tiny-sd"))
        assert len(images) == 1 and "Memory plan" in note
        assert len(fake.requests) == asked  # drawn from the disk, not the hub
        # training takes it too, and its job loads the folder on disk, not the hub id
        client.predict(*_train_settings(ds_folder, "demo/tiny-sd"), api_name="/sd_train")
        run = s.jobs.list_runs("sd")[0]
        v = s.jobs.wait(run.id, 240)
        assert v.status == "succeeded", v.error or v.log_tail
        saved = json.loads((s.jobs.run_dir(run.id) / "config.json").read_text())
        assert saved["base_model"] == "demo/tiny-sd"
        assert saved["base_model_path"].startswith(str(tmp_path / "cache"))
        assert len(fake.requests) == asked
    finally:
        stop_studio(s, app)
        fake.stop()


def test_captions_save_refuses_a_renamed_file_and_counts_changes(client_and_studio, tmp_path):
    """A renamed file cell used to drop that row's caption silently ("Saved N captions")."""
    from gradio_client import handle_file

    from tabs.sd.dataset import load_dataset

    client, _s = client_and_studio
    paths = []
    for i in range(2):
        p = tmp_path / f"c{i}.png"
        Image.fromarray(np.full((300, 300, 3), 40 * (i + 1), np.uint8)).save(p)
        paths.append(handle_file(str(p)))
    folder, _r, _g, captions = client.predict(files=paths, instance="sks dog", size=256,
                                              api_name="/sd_prepare")
    rows = captions["data"]
    renamed = [["renamed.png", rows[0][1], "sks dog, edited", rows[0][3]], rows[1]]
    with pytest.raises(Exception, match="renamed.png: not a file of this dataset"):
        client.predict(folder, {"headers": captions["headers"], "data": renamed},
                       api_name="/sd_save_captions")
    assert [it.text for it in load_dataset(folder).items] == ["sks dog", "sks dog"]
    edited = [[rows[0][0], rows[0][1], "sks dog, edited", rows[0][3]], rows[1]]
    client.predict(folder, {"headers": captions["headers"], "data": edited},
                   api_name="/sd_save_captions")
    assert [it.text for it in load_dataset(folder).items] == ["sks dog, edited", "sks dog"]


def test_prepare_warns_about_images_smaller_than_the_training_size(client_and_studio,
                                                                   tmp_path):
    from gradio_client import handle_file

    client, _s = client_and_studio
    small = tmp_path / "small.png"
    Image.fromarray(np.full((160, 200, 3), 70, np.uint8)).save(small)
    big = tmp_path / "big.png"
    Image.fromarray(np.full((300, 300, 3), 70, np.uint8)).save(big)
    _f, report, _g, _c = client.predict(files=[handle_file(str(small)), handle_file(str(big))],
                                        instance="sks", size=256, api_name="/sd_prepare")
    assert "1 of 2 images are smaller than the training size (256 px)" in report
    assert "small.png" in report and "big.png" not in report.split("enlarged")[1]


def test_cpu_demo_fills_a_tiny_base_and_a_dataset_that_generate_uses(client_and_studio):
    from tabs.sd import service
    from tabs.sd.dataset import load_dataset

    client, s = client_and_studio
    out = client.predict(api_name="/sd_demo")
    folder, report, base = out[0], out[1], out[4]["value"]
    assert "4 images ready at 32x32" in report and len(load_dataset(folder).items) == 4
    assert base == str(service.demo_dir(s))
    assert "CPU demo mode" in out[-1]
    assert any(label.startswith("CPU demo") for label, _ in service.base_options(s, "sd15"))
    images, note = client.predict(**_gen_kwargs(base))
    assert len(images) == 1 and "Memory plan" in note
