"""Two sessions using one shared model at the same moment each get their own settings' result:
SD generation with different LoRAs at a fixed seed, and QLoRA chat with different adapters.
Also: one model for the same weights under two titles."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")


def _cpu_studio(home):
    from studio.config import Settings
    from studio.context import build_studio
    from studio.devices import CpuProbe

    return build_studio(Settings(home=home), probe=CpuProbe(), start_jobs=False)


# ----- SD: LoRAs per request ----------------------------------------------------------------
@pytest.fixture(scope="module")
def sd_setup(tmp_path_factory):
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    from tabs.sd import lora_io
    from tabs.sd.tiny import make_tiny_sd15

    root = tmp_path_factory.mktemp("sd")
    base = make_tiny_sd15(root / "base")
    loras = []
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"]))
    for i, name in enumerate(("red", "blue")):
        torch.manual_seed(10 + i)
        for n, p in pipe.unet.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.5)
        unet_sd, _ = lora_io.peft_state_dicts(pipe.unet)
        saved = lora_io.save_lora(root / name, unet_sd, None,
                                  lora_io.LoraInfo(name=name, base_model=str(base), rank=2,
                                                   alpha=2))
        loras.append(str(saved.diffusers_path))
    return base, loras


def test_concurrent_generations_each_get_their_own_lora(sd_setup, tmp_path):
    from tabs.sd.generate import GenerateRequest, LoraChoice, generate

    base, (red, blue) = sd_setup
    studio = _cpu_studio(tmp_path / "home")
    req = GenerateRequest(base=str(base), prompt="a toy", steps=2, width=32, height=32,
                          seed=5, scheduler="Euler")

    def pixels(result):
        return np.asarray(Image.open(result.images[0].path)).astype(int)

    alone = {lora: pixels(generate(studio, dataclasses.replace(
        req, loras=[LoraChoice(lora, 1.0)]), tmp_path / "ref")) for lora in (red, blue)}
    assert np.abs(alone[red] - alone[blue]).max() > 0, "the two LoRAs must draw differently"

    # Session "red" pauses after its first step until "blue" has started drawing (or 1.5 s):
    # with the pipeline shared unguarded, blue's LoRA is set under red's remaining steps.
    blue_started = threading.Event()
    got, errors = {}, []

    def session(lora, on_step):
        try:
            r = generate(studio, dataclasses.replace(req, loras=[LoraChoice(lora, 1.0)]),
                         tmp_path / "both", on_step=on_step)
            got[lora] = pixels(r)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def red_step(i, n):
        if i == 1:
            blue_started.wait(1.5)

    def blue_step(i, n):
        blue_started.set()

    t_red = threading.Thread(target=session, args=(red, red_step))
    t_red.start()
    threading.Event().wait(0.2)  # red is drawing
    t_blue = threading.Thread(target=session, args=(blue, blue_step))
    t_blue.start()
    t_red.join(60)
    t_blue.join(60)
    assert not errors
    assert np.array_equal(got[red], alone[red]), "red's image was drawn with blue's LoRA"
    assert np.array_equal(got[blue], alone[blue])
    studio.close()


# ----- QLoRA chat: adapters per request -----------------------------------------------------
@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from studio.llm.testing import (
        build_tokenizer,
        random_lora_adapter,
        save_chat_model,
        tiny_model,
    )
    from tabs.qlora.config import QLoRAConfig

    root = tmp_path_factory.mktemp("qlora")
    tok = build_tokenizer("llama3.1")
    model = tiny_model("llama3.1", tok, seed=4)
    base = save_chat_model(model, tok, root / "base")
    runs = root / "home" / "runs"
    for i, run_id in enumerate(("20260101-000000-qlora-aaaaaa", "20260101-000000-qlora-bbbbbb")):
        d = runs / run_id
        d.mkdir(parents=True)
        random_lora_adapter(model, d / "adapter", seed=20 + i)
        (d / "config.json").write_text(json.dumps(QLoRAConfig(base_model=str(base)).to_dict()))
    return root / "home", ["20260101-000000-qlora-aaaaaa", "20260101-000000-qlora-bbbbbb"]


def test_two_sessions_chatting_with_different_adapters_get_their_own(two_runs):
    from studio.config import Settings
    from studio.context import build_studio
    from studio.devices import CpuProbe
    from studio.llm import GenerationSettings
    from tabs.qlora import service

    home, (run_a, run_b) = two_runs
    studio = build_studio(Settings(home=home), probe=CpuProbe(), start_jobs=False)
    try:
        msg = [{"role": "user", "content": "Hello there"}]
        greedy = GenerationSettings(temperature=0.0, max_new_tokens=12)
        ref = {r: service.chat(studio, r, [], "Hello there", max_new_tokens=12)
               for r in (run_a, run_b)}
        assert ref[run_a] != ref[run_b]
        # session A picks its engine, then session B picks its own before A's reply runs
        engine_a = service.chat_engine(studio, run_a)
        engine_b = service.chat_engine(studio, run_b)
        assert engine_a.chat(msg, greedy).text == ref[run_a], "A was answered with B's adapter"
        assert engine_b.chat(msg, greedy).text == ref[run_b]
        # and both at once, a few turns each
        got, errors = {run_a: [], run_b: []}, []

        def session(run_id):
            try:
                for _ in range(3):
                    got[run_id].append(service.chat(studio, run_id, [], "Hello there",
                                                    max_new_tokens=12))
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=session, args=(r,)) for r in (run_a, run_b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        assert got == {run_a: [ref[run_a]] * 3, run_b: [ref[run_b]] * 3}
        loaded = [r.key for r in studio.models.loaded()]
        assert len(loaded) == 1, f"one base for both runs, got {loaded}"
    finally:
        studio.close()


def test_same_weights_under_two_titles_are_one_model(two_runs):
    from studio.llm import ModelSource, TransformersEngine

    home, _ = two_runs
    base = home.parent / "base"
    a = ModelSource(str(base), title="Mine")
    b = ModelSource(str(base) + "/", title="Also mine")
    assert a.key == b.key
    studio = _cpu_studio(home.parent / "h2")
    try:
        ea, eb = TransformersEngine(studio, a), TransformersEngine(studio, b)
        assert ea.key == eb.key and ea.name != eb.name
        assert TransformersEngine(studio, a, fast=False).key != ea.key  # loaded differently
    finally:
        studio.close()
