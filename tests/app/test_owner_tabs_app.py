"""A shared link is several strangers at once: through gradio_client (the production queue
settings), two scripts, A and B (one Client, one owner), in the RAG, Tiny GPT, YOLO and SD tabs.
B never sees A's knowledge bases, runs, datasets, weights or LoRAs, and cannot use, change or
delete them by sending A's names, ids or paths; A can. Names may repeat between owners."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from tests.app.owners import client_owner
from tests.conftest import launch_studio, stop_studio

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    from gradio_client import Client

    root = tmp_path_factory.mktemp("owners")
    s, app, url = launch_studio(root / "home", tab_modules=["tabs.rag", "tabs.tinygpt",
                                                             "tabs.yolo", "tabs.sd"])
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    try:
        yield s, a, b, root
    finally:
        stop_studio(s, app)


def _rows(table):
    return table["data"] if isinstance(table, dict) else table


def _value(x):
    return x.get("value") if isinstance(x, dict) and x.get("__type__") == "update" else x


def _choices(x):
    return [c[1] if isinstance(c, (list, tuple)) else c for c in x.get("choices", [])]


def test_knowledge_bases(two):
    from gradio_client import handle_file

    s, a, b, root = two
    note = root / "alice.md"
    note.write_text("# Wifi\n\nThe guest wifi password is tangerine-42.\n")
    other = root / "bob.md"
    other.write_text("# Wifi\n\nThe guest wifi password is walnut-77.\n")
    assert _value(a.predict("notes", api_name="/rag_create_kb")[0]) == "notes"
    a.predict("notes", [handle_file(str(note))], "", "now", api_name="/rag_ingest")
    _, found = a.predict("notes", "guest wifi password", 3, True, False, api_name="/rag_search")
    assert "tangerine-42" in found["sources"][0]["text"]

    refused = {
        "/rag_search": ("notes", "guest wifi password", 3, True, False),
        "/rag_ask": ("notes", "What is the wifi password?", [], 3, True, False, False, 16, 0.0),
        "/rag_sources": ("notes",),
        "/rag_delete_source": ("notes", "alice.md"),
        "/rag_repair": ("notes",),
        "/rag_eval": ("notes", None, 2, 3, False),
    }
    for api, args in refused.items():
        with pytest.raises(Exception, match=r"No knowledge base 'notes'\."):
            b.predict(*args, api_name=api)
    # B's own "notes" is another knowledge base under the same name
    picker = b.predict("notes", api_name="/rag_create_kb")[0]
    assert _choices(picker) == ["notes"]
    b.predict("notes", [handle_file(str(other))], "", "now", api_name="/rag_ingest")
    _, mine = b.predict("notes", "guest wifi password", 3, True, False, api_name="/rag_search")
    assert [h["file"] for h in mine["sources"]] == ["bob.md"]
    _, theirs = a.predict("notes", "guest wifi password", 3, True, False, api_name="/rag_search")
    assert [h["file"] for h in theirs["sources"]] == ["alice.md"], "A's is untouched"
    assert [r[0] for r in _rows(a.predict("notes", api_name="/rag_sources"))] == ["alice.md"]


def _tinygpt_run(s, owner, rid):
    d = s.jobs.runs_dir / rid
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"id": rid, "kind": "tinygpt", "status": "succeeded",
                                            "created": time.time(), "title": f"GPT {rid}",
                                            "owner": owner}))
    (d / "events.jsonl").write_text(json.dumps({"t": time.time(), "type": "metrics", "step": 10,
                                                "train_loss": 2.0, "val_loss": 1.9}) + "\n")
    return d


def test_tiny_gpt_runs(two):
    s, a, b, _ = two
    folder = _tinygpt_run(s, client_owner(a), "20250101-000000-tinygpt-aaaaaa")
    rid = folder.name
    assert "aaaaaa" in json.dumps(a.predict(api_name="/tinygpt_compare"))
    assert "aaaaaa" in json.dumps(a.predict("val_loss", api_name="/tinygpt_curves"))
    assert "aaaaaa" not in json.dumps(b.predict(api_name="/tinygpt_compare"))
    assert "aaaaaa" not in json.dumps(b.predict("val_loss", api_name="/tinygpt_curves"))
    for args, api in [((rid, "def ", 5, 0.8, 40, "on"), "/tinygpt_generate"),
                      ((rid, "val_loss"), "/tinygpt_delete")]:
        with pytest.raises(Exception, match=f"No run {rid}"):
            b.predict(*args, api_name=api)
    assert folder.exists(), "B deleted nothing"
    with pytest.raises(Exception, match="no checkpoint yet"):  # A reaches its run
        a.predict(rid, "def ", 5, 0.8, 40, "on", api_name="/tinygpt_generate")
    assert "Deleted run" in a.predict(rid, "val_loss", api_name="/tinygpt_delete")[0]
    assert not folder.exists()


def test_yolo_datasets_and_weights(two):
    from gradio_client import handle_file
    from ultralytics import YOLO

    s, a, b, root = two
    img = root / "photo0.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
                    ).save(img)
    a.predict("parts", "bolt, nut", api_name="/yolo_create_dataset")
    a.predict("parts", [handle_file(str(img))], False, api_name="/yolo_add_files")
    boxes = json.dumps([{"xmin": 2, "ymin": 3, "xmax": 20, "ymax": 20, "cls": 0}])
    assert a.predict("parts", "photo0.png", boxes, api_name="/yolo_set_boxes")["saved"] == 1
    for args, api in [(("parts", False), "/yolo_images"),
                      (("parts", "photo0.png"), "/yolo_get_boxes"),
                      (("parts", "photo0.png", "[]"), "/yolo_set_boxes"),
                      (("parts", "car"), "/yolo_set_classes"),
                      (("parts", 0.5), "/yolo_split"),
                      (("parts",), "/yolo_export_dataset")]:
        with pytest.raises(Exception, match=r"No dataset 'parts'\."):
            b.predict(*args, api_name=api)
    b.predict("parts", "cat", api_name="/yolo_create_dataset")  # B's own, the same name
    assert b.predict("parts", False, api_name="/yolo_images")["total"] == 0
    got = a.predict("parts", "photo0.png", api_name="/yolo_get_boxes")
    assert got["labelled"] and len(got["boxes"]) == 1, "A's labels are untouched"

    # A's trained weights: a run of A's with a (random-weight) YOLOv8n checkpoint in it
    rid = "20250101-000000-yolo-bbbbbb"
    d = s.jobs.runs_dir / rid
    (d / "weights").mkdir(parents=True)
    YOLO("yolov8n.yaml").save(str(d / "weights" / "best.pt"))
    (d / "run.json").write_text(json.dumps({"id": rid, "kind": "yolo", "status": "succeeded",
                                            "created": time.time(), "title": "YOLO mine",
                                            "owner": client_owner(a)}))
    (d / "events.jsonl").write_text(json.dumps({"t": time.time(), "type": "artifact",
                                                "path": "weights/best.pt", "kind": "model",
                                                "label": "best"}) + "\n")
    weights = str(d / "weights" / "best.pt")
    with pytest.raises(Exception, match=r"No model 'best\.pt'\."):
        b.predict(handle_file(str(img)), weights, None, False, 0.25, 0.7,
                  api_name="/yolo_detect")
    with pytest.raises(Exception, match=r"No model 'best\.pt'\."):
        b.predict("parts", "photo0.png", weights, 0.25, api_name="/yolo_prelabel")
    with pytest.raises(Exception, match=r"No model 'best\.pt'\."):  # nor a start for training
        b.predict("parts", weights, 1, 64, 4, 20, 0, False, 0.0, 0.5, True, False,
                  api_name="/yolo_train")
    for args, api in [((rid,), "/yolo_results"), ((rid,), "/yolo_export")]:
        with pytest.raises(Exception, match=f"No run {rid}"):
            b.predict(*args, api_name=api)
    annotated, _rows_ = a.predict(handle_file(str(img)), weights, None, False, 0.25, 0.7,
                                  api_name="/yolo_detect")
    assert annotated, "A detects with its own weights"
    from tabs.yolo.service import get_service

    svc = get_service(s)
    assert weights in [p for _, p in svc.model_choices(client_owner(a))]
    assert weights not in [p for _, p in svc.model_choices(client_owner(b))]


def test_sd_loras_and_prepared_datasets(two):
    import torch
    from gradio_client import handle_file
    from safetensors.torch import save_file

    from tabs.sd import service

    s, a, b, root = two
    lib = service.lora_library(s, client_owner(a))  # where A's finished runs copy their LoRA
    lib.mkdir(parents=True, exist_ok=True)
    save_file({"x": torch.zeros(1)}, str(lib / "mine.safetensors"))
    shared = service.lora_library(s)
    shared.mkdir(parents=True, exist_ok=True)
    save_file({"x": torch.zeros(1)}, str(shared / "demo.safetensors"))
    assert {p for _, p in service.list_loras(s, client_owner(a))} == \
        {str(lib / "mine.safetensors"), str(shared / "demo.safetensors")}
    assert [p for _, p in service.list_loras(s, client_owner(b))] == \
        [str(shared / "demo.safetensors")], "B is offered the shared LoRA only"
    gen = dict(arch_v="sd15", base_v="", prompt_v="a cat", neg_v="", steps_v=2, guid_v=5,
               seed_v=5, w_v=32, h_v=32, b_v=1, sched_v="Euler", lora2=None, lora3=None,
               str1=1, str2=1, str3=1, api_name="/sd_generate")
    with pytest.raises(Exception, match=r"No LoRA 'mine\.safetensors'\."):
        b.predict(lora1=str(lib / "mine.safetensors"), **gen)
    # the shared one and A's own pass the check (and stop at the missing base model)
    for client, path in ((b, shared / "demo.safetensors"), (a, lib / "mine.safetensors")):
        with pytest.raises(Exception, match="base model"):
            client.predict(lora1=str(path), **gen)

    pic = root / "cat.png"
    Image.fromarray(np.full((160, 160, 3), 90, np.uint8)).save(pic)
    folder, *_ = a.predict([handle_file(str(pic))], "a photo of sks cat", 256, False, "center",
                           api_name="/sd_prepare")
    with pytest.raises(Exception, match="No prepared dataset folder"):
        b.predict(folder, {"headers": ["file", "uploaded as", "caption", "size"],
                           "data": [["cat.png", "cat.png", "a dog", "256x256"]]},
                  api_name="/sd_save_captions")
    settings = [folder, "some/base", "mine", "sks", 256, 4, 4, 5, 1e-3, "constant", 0, 1, 1,
                "off", "no", False, False, 42, 0.0, False, "", 100, 1.0, "", "", 0]
    with pytest.raises(Exception, match="No prepared dataset folder"):
        b.predict(*settings, api_name="/sd_train")
    with pytest.raises(Exception, match="not on disk"):  # A's own folder passes the check
        a.predict(*settings, api_name="/sd_train")
