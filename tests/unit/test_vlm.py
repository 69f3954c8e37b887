"""The VLM engine on CPU with tiny random LLaVA and Qwen2-VL models built from configs (local
tokenizers, image processors and chat templates): an image turn streams, the picture reaches
the model, the fast decode path equals generate(), Stop, multi-turn with two pictures, and a
bad picture is refused with a message while the engine keeps working."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from studio.llm import GenerationSettings
from tabs.vlm.engine import VLMEngine, VLMSource, embed_prompt, process
from tabs.vlm.images import ImageRefused
from tabs.vlm.tiny import make_tiny_vlm

GREEDY = GenerationSettings(temperature=0, max_new_tokens=12)
FAMILIES = ["llava", "qwen2-vl"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    return {f: make_tiny_vlm(root / f, f, seed=1) for f in FAMILIES + ["qwen2.5-vl"]}


def picture(seed: int, size=(80, 60)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def ask(img, text="Describe the image."):
    return [{"role": "user", "content": [{"type": "image", "image": img},
                                         {"type": "text", "text": text}]}]


@pytest.mark.parametrize("family", FAMILIES)
def test_image_turn_streams_an_answer_through_the_fast_path(studio, folders, family):
    engine = VLMEngine(studio, VLMSource(str(folders[family]), "fp32"))
    events = list(engine.stream_chat(ask(picture(0)), GREEDY))
    texts = [e.text for e in events if e.kind == "text"]
    done = events[-1]
    assert done.kind == "done" and len(texts) >= 2  # streamed in pieces, not one block
    assert "".join(texts) == done.text and done.stats.new_tokens >= 2
    assert done.stats.prompt_tokens > 16  # the picture's tokens are in the prompt
    assert done.stats.ttft_s > 0 and done.stats.decode_tokens_per_s > 0
    llm = studio.models.get_loaded(engine.key)
    assert llm.decoder is not None  # static cache decoder, not generate()


@pytest.mark.parametrize("family", FAMILIES + ["qwen2.5-vl"])
def test_fast_decode_gives_generates_greedy_tokens_and_the_image_matters(studio, folders,
                                                                         family):
    import torch

    engine = VLMEngine(studio, VLMSource(str(folders[family]), "fp32"))
    with studio.models.use(engine.key) as llm:
        inputs, _ = process(llm, ask(picture(0)))
        ref = llm.model.generate(**inputs, max_new_tokens=16, do_sample=False,
                                 eos_token_id=None)[0, inputs["input_ids"].shape[1]:].tolist()
        ids = inputs["input_ids"][0].tolist()
        pre = embed_prompt(llm.model, inputs)
        got = list(llm.decoder.generate(ids, 16, lambda logits, _: int(logits.argmax(-1)),
                                        inputs=pre))
        assert got == ref
        first = llm.decoder.prefill(ids, inputs=pre)[0]
        with torch.no_grad():
            assert torch.allclose(first, llm.model(**inputs).logits[0, -1], atol=1e-4)
        other, _ = process(llm, ask(picture(7)))
        assert other["input_ids"].tolist() == inputs["input_ids"].tolist()  # same text...
        second = llm.decoder.prefill(ids, inputs=embed_prompt(llm.model, other))[0]
        assert (first - second).abs().max() > 1e-3  # ...another picture: other logits


def test_stop_ends_the_stream_within_a_token_or_two(studio, folders):
    engine = VLMEngine(studio, VLMSource(str(folders["qwen2-vl"]), "fp32"))
    stop = threading.Event()
    n = 0
    done = None
    settings = GenerationSettings(temperature=0.8, seed=1, max_new_tokens=400)
    for ev in engine.stream_chat(ask(picture(1)), settings, stop_event=stop):
        if ev.kind == "text":
            n += 1
            if n == 2:
                stop.set()
        if ev.kind == "done":
            done = ev
    assert done.stats.stopped and done.stats.new_tokens <= 5


def test_seeded_sampling_repeats_and_two_pictures_over_two_turns(studio, folders):
    engine = VLMEngine(studio, VLMSource(str(folders["qwen2-vl"]), "fp32"))
    settings = GenerationSettings(temperature=1.0, seed=5, max_new_tokens=10)
    a = engine.chat(ask(picture(2)), settings).text
    assert engine.chat(ask(picture(2)), settings).text == a
    convo = ask(picture(2)) + [{"role": "assistant", "content": a}] + \
        ask(picture(3), "Compare the two pictures.")
    out = engine.chat(convo, GREEDY)
    assert out.stats.prompt_tokens > 2 * 16 and out.stats.new_tokens >= 1


def test_bad_picture_is_refused_with_a_message_and_the_engine_keeps_working(studio, folders,
                                                                           tmp_path):
    engine = VLMEngine(studio, VLMSource(str(folders["llava"]), "fp32"))
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ImageRefused, match="photo.jpg: not an image"):
        list(engine.stream_chat(ask(str(bad)), GREEDY))
    cmyk = tmp_path / "print.jpg"
    picture(4).convert("CMYK").save(cmyk)
    events = list(engine.stream_chat(ask(str(cmyk)), GREEDY))
    assert any(e.kind == "notice" and "CMYK" in e.text for e in events)
    assert events[-1].kind == "done" and events[-1].stats.new_tokens >= 1
