"""The Vision tab through gradio_client: a picture turn streams an answer with its stats, a
second turn keeps the first picture, a bad picture gets a message (and the app keeps
answering), Stop without a running request says so, and grounding boxes reach the YOLO
labeler's dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import launch_studio, stop_studio

pytestmark = pytest.mark.slow

QWEN25 = '```json\n[{"bbox_2d": [10, 20, 50, 60], "label": "ball"}]\n```'


@pytest.fixture(scope="module")
def vlm_app(tmp_path_factory):
    from gradio_client import Client

    from tabs.vlm.tiny import make_tiny_vlm

    root = tmp_path_factory.mktemp("vlmapp")
    model = make_tiny_vlm(root / "tiny-qwen2-vl", "qwen2-vl", seed=2)
    s, app, url = launch_studio(root / "home", tab_modules=["tabs.vlm"])
    yield Client(url, verbose=False), s, model, root
    stop_studio(s, app)


def _settings(model):  # model, load as, picture cap, system prompt, sampling
    return [str(model), "fp32", 0, "", 24, 0, 0.9, 1.0, -1]


def _send(client, model, text, pic, history, adapter=""):
    return client.predict(text, pic, None, history, *_settings(model), adapter,
                          api_name="/vlm_send")


def test_picture_conversation_over_the_api(vlm_app):
    from gradio_client import handle_file

    client, s, model, root = vlm_app
    rng = np.random.default_rng(0)
    pic = root / "photo.png"
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(pic)
    out = _send(client, model, "What is in the picture?", handle_file(str(pic)), [])
    history, stats = out[0], out[1]
    assert [m["role"] for m in history] == ["user", "assistant"]
    user_parts = history[0]["content"]
    assert any(p.get("type") == "file" for p in user_parts)  # the picture is in the chat
    assert "tok/s" in stats and "first token" in stats and "prompt" in stats
    first_prompt = int(stats.split("prompt ")[1].split()[0])
    assert first_prompt > 16  # picture tokens counted

    # second turn, no new picture: the first one is still part of the prompt. The client
    # downloaded the picture; a script sends the history back with it as a file again.
    history = [{**m, "content": [{**p, "file": handle_file(p["file"])} if p.get("type") ==
                                 "file" else p for p in m["content"]]} for m in history]
    out = _send(client, model, "And the colours?", None, history)
    assert len(out[0]) == 4
    assert int(out[1].split("prompt ")[1].split()[0]) > first_prompt

    bad = root / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg at all")
    with pytest.raises(Exception, match="broken.jpg: not an image"):
        _send(client, model, "?", handle_file(str(bad)), [])
    with pytest.raises(Exception, match="outside the studio home"):  # no adapter from anywhere
        _send(client, model, "?", handle_file(str(pic)), [], adapter=str(root))
    assert client.predict(api_name="/vlm_stop") == "Nothing is generating."
    out = _send(client, model, "Still there?", handle_file(str(pic)), [])
    assert out[0][-1]["role"] == "assistant"


def test_grounding_boxes_go_to_the_yolo_labeler(vlm_app):
    from gradio_client import handle_file

    from tabs.yolo.service import get_service

    client, s, model, root = vlm_app
    pic = root / "ball.png"
    Image.new("RGB", (224, 224), "white").save(pic)  # the tiny model sees it as 112 x 112
    drawn, boxes, summary = client.predict(QWEN25, handle_file(str(pic)), *_settings(model),
                                           api_name="/vlm_ground")
    assert summary == "1 box: ball" and drawn
    # Qwen2.5-VL-style absolute coordinates are in the model's input pixels: scaled by 2
    assert json.loads(boxes) == [{"label": "ball", "x1": 20, "y1": 40, "x2": 100, "y2": 120}]
    msg = client.predict("from-vlm", handle_file(str(pic)), boxes, api_name="/vlm_to_yolo")
    assert "1 pre-label" in msg
    ds = get_service(s).dataset("from-vlm")
    [name] = ds.images()
    assert [(b.cls, *(round(v) for v in (b.x1, b.y1, b.x2, b.y2))) for b in ds.boxes(name)] \
        == [(0, 20, 40, 100, 120)]
