"""Hostile input (issue 17): no upload runs code, nothing is written outside the home, bombs are
refused before anything large is written, uploads never collide, every bad value gets a reason.

The canary pickle (tests/canary.py) creates a file when a full unpickler loads it; every model
field and config file path is given one, and the canary file must never appear.
"""

from __future__ import annotations

import io
import json
import struct
import time
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from studio import safety
from tests.canary import write_canary_pickle


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "CANARY"
    yield path
    assert not path.exists(), "a pickle given as input was unpickled: its code ran"


def _home(tmp_path):
    from studio.config import Settings

    s = Settings(home=tmp_path / "home")
    s.make_dirs()
    return s


# ----- 1. model files ---------------------------------------------------------------------------
def test_the_model_file_rule_plain_tensors_load_pickles_with_code_need_trust(tmp_path, canary):
    import torch

    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    assert safety.check_model_file(plain) == plain  # weights_only=True accepts it
    st = tmp_path / "model.safetensors"
    st.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    assert safety.check_model_file(st) == st
    for zipped in (False, True):
        evil = write_canary_pickle(tmp_path / f"evil{zipped}.bin", canary, zipped)
        with pytest.raises(safety.UnsafeModelFile, match="I trust this file"):
            safety.check_model_file(evil, label="Model")
        # named like a safe format: the bytes decide, not the name
        disguised = tmp_path / f"disguised{zipped}.pth"
        disguised.write_bytes(evil.read_bytes())
        with pytest.raises(safety.UnsafeModelFile):
            safety.check_model_file(disguised)
    # Trust is per file: the token is the sha256 of the bytes that were trusted.
    token = safety.trust_token(evil)
    assert safety.check_model_file(evil, trusted=token) == evil
    evil.write_bytes(evil.read_bytes() + b"\0")
    with pytest.raises(safety.UnsafeModelFile):
        safety.check_model_file(evil, trusted=token)
    # A folder with a pickle that runs code, a 3,000-character path, a hub id.
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    write_canary_pickle(folder / "pytorch_model.bin", canary, True)
    with pytest.raises(safety.UnsafeModelFile, match="pytorch_model.bin"):
        safety.check_model_source(str(folder), label="Base model")
    with pytest.raises(ValueError, match="3000 characters"):
        safety.check_model_source("x" * 3000, label="Base model")
    assert safety.check_model_source("org/model") == "org/model"
    with pytest.raises(ValueError, match="no such file or folder"):
        safety.check_model_source("/nope/../../etc/x.pt")


def test_every_model_field_refuses_the_canary(tmp_path, canary):
    """YOLO Train and Detect, QLoRA base, SD base and its config source, Whisper model and
    diarization, RAG reranker: each gets a folder or file whose pickle would create the canary."""
    from tabs.qlora.config import QLoRAConfig
    from tabs.sd.config import SDTrainConfig
    from tabs.sd.train import check_trainable_base
    from tabs.whisper.config import TranscribeConfig
    from tabs.yolo.detect import UnsafeModelFile, check_model_file, check_train_model

    pt = write_canary_pickle(tmp_path / "up" / "yolov8n.pt", canary)
    with pytest.raises(UnsafeModelFile):
        check_train_model(str(pt), trusted=False)  # YOLO Train
    with pytest.raises(UnsafeModelFile):
        check_model_file(pt, trusted=False)  # YOLO Detect / prelabel

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    write_canary_pickle(hf / "pytorch_model.bin", canary, True)
    with pytest.raises(ValueError, match="pickle"):
        QLoRAConfig(base_model=str(hf), train_file="x.jsonl").validate()
    with pytest.raises(ValueError, match="pickle"):
        TranscribeConfig(model=str(hf)).validate()
    with pytest.raises(ValueError, match="pickle"):
        safety.check_model_source(str(hf), label="Reranker", need=("config.json",))

    sd = tmp_path / "sd"
    (sd / "unet").mkdir(parents=True)
    (sd / "model_index.json").write_text("{}")
    write_canary_pickle(sd / "unet" / "diffusion_pytorch_model.bin", canary, True)
    with pytest.raises(ValueError, match="pickle"):
        check_trainable_base(str(sd))
    with pytest.raises(ValueError, match="pickle"):
        SDTrainConfig(single_file_config=str(sd)).validate()
    ckpt = write_canary_pickle(tmp_path / "base.ckpt", canary)
    with pytest.raises(ValueError, match="pickle"):
        check_trainable_base(str(ckpt))



@pytest.mark.slow
def test_transformers_fields_load_bin_weights_only(tmp_path, canary):
    """Chat, QLoRA, the RAG embedder and Whisper's transformers engine hand folders to
    transformers, which loads .bin weights with weights_only=True: even past our check, the
    canary does not run."""
    from transformers import AutoModelForCausalLM

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    write_canary_pickle(hf / "pytorch_model.bin", canary, True)
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do; the canary must not run
        AutoModelForCausalLM.from_pretrained(str(hf))


def _pyannote_folder(tmp_path, canary, name="pyannote.audio.pipelines.SpeakerDiarization",
                     extra=""):
    folder = tmp_path / "diar"
    (folder / "segmentation").mkdir(parents=True)
    write_canary_pickle(folder / "segmentation" / "pytorch_model.bin", canary, True)
    write_canary_pickle(folder / "emb.bin", canary, True)
    (folder / "config.yaml").write_text(
        f"pipeline:\n  name: {name}\n  params:\n    segmentation: $model/segmentation\n"
        f"    embedding: emb.bin\n{extra}")
    return folder


def test_whisper_diarization_source_never_unpickles_or_builds_other_classes(tmp_path, canary):
    from tabs.whisper.diarization import DiarizationUnavailable, PyannoteDiarizer, check_source

    studio = SimpleNamespace(settings=SimpleNamespace(cache_dir=tmp_path / "cache"))
    folder = _pyannote_folder(tmp_path, canary)
    with pytest.raises(DiarizationUnavailable, match="pickle"):
        PyannoteDiarizer(studio, str(folder))._load("cpu")
    (folder / "config.yaml").write_text("pipeline:\n  name: os.system\n  params: {}\n")
    with pytest.raises(DiarizationUnavailable, match="only pyannote's SpeakerDiarization"):
        check_source(str(folder))
    (folder / "config.yaml").write_text(
        "pipeline:\n  name: SpeakerDiarization\n  params:\n    embedding: evil/embedding\n")
    with pytest.raises(DiarizationUnavailable, match="pyannote hub model"):
        check_source(str(folder))
    (folder / "config.yaml").write_text("pipeline:\n  name: SpeakerDiarization\n"
                                        "preprocessors:\n  audio: {name: os.system}\n")
    with pytest.raises(DiarizationUnavailable, match="preprocessors"):
        check_source(str(folder))
    with pytest.raises(DiarizationUnavailable, match="pyannote hub pipeline"):
        check_source("someone/evil-pipeline")
    assert check_source("pyannote/speaker-diarization-community-1")


# ----- 2. names and paths -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../../../../../outside/SD_ESCAPE", "/tmp/abs", "a/b", "..",
                                  ".hidden", "x\x00y", "", "a" * 300])
def test_a_user_name_never_becomes_a_path_outside(tmp_path, name):
    root = tmp_path / "home" / "runs"
    root.mkdir(parents=True)
    with pytest.raises(ValueError, match="LoRA name"):
        safety.child_path(root, name, label="LoRA name", suffix=".safetensors")


def test_sd_lora_name_and_caption_folder_stay_in_the_home(tmp_path):
    from tabs.sd import lora_io, service
    from tabs.sd.config import SDTrainConfig

    run = tmp_path / "home" / "runs" / "r1"
    escape = "../../../../../../outside/SD_ESCAPE"
    with pytest.raises(ValueError, match="LoRA name"):
        SDTrainConfig(output_name=escape).validate()  # refused before queueing
    with pytest.raises(ValueError, match="LoRA name"):
        lora_io.save_lora(run / "lora", {}, None, lora_io.LoraInfo(escape, "b", 4, 4.0))
    assert not list(tmp_path.rglob("SD_ESCAPE*"))

    settings = _home(tmp_path)
    studio = SimpleNamespace(settings=settings)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n')
    before = (elsewhere / "metadata.jsonl").read_text()
    for folder in (str(elsewhere), str(settings.uploads_dir / "sd" / ".." / ".." / ".."),
                   "/etc"):
        with pytest.raises(ValueError, match="outside the studio home|does not exist"):
            service.save_captions(studio, folder, {"a.png": "hacked"})
    assert (elsewhere / "metadata.jsonl").read_text() == before


def test_tinygpt_folder_corpus_does_not_follow_links_out_of_the_home(tmp_path):
    from tabs.tinygpt import data

    home = tmp_path / "home"
    corpus = home / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "a.txt").write_text("hello world " * 20)
    (corpus / "passwd").symlink_to("/etc/passwd")
    c = data.folder_corpus(data.resolve_under("corpus", home))
    assert "root:" not in c.text and "hello world" in c.text
    assert any("outside the folder" in why for _, why in c.skipped)
    with pytest.raises(ValueError, match="outside the studio home"):
        data.resolve_under("/etc", home)


# ----- 3. uploads: bombs, YAML, collisions ------------------------------------------------------
def _bomb(path: Path, size: int = 64 << 20) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("big.png", "w", force_zip64=True) as f:
            block = b"\0" * (1 << 20)
            for _ in range(size >> 20):
                f.write(block)
    return path


def _declared_big(path: Path) -> Path:
    """A tiny zip whose headers claim 3 GiB (the declared size alone must refuse it)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.png", b"x")
    data = bytearray(path.read_bytes())
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24:cd + 28] = struct.pack("<I", 3 << 30)  # uncompressed size in the directory
    path.write_bytes(bytes(data))
    return path


def test_zip_bombs_are_refused_before_anything_large_is_written(tmp_path):
    bomb = _bomb(tmp_path / "bomb.zip")
    assert bomb.stat().st_size < 1 << 20  # 64 MiB of zeros in well under 1 MiB
    dest = tmp_path / "out"
    t0 = time.perf_counter()
    with pytest.raises(safety.ArchiveRefused, match="zip bomb"):
        safety.safe_extract(bomb, dest)
    with pytest.raises(safety.ArchiveRefused, match="extract budget"):
        safety.safe_extract(_declared_big(tmp_path / "claims.zip"), dest)
    with pytest.raises(safety.ArchiveRefused, match="extract budget"):
        safety.safe_extract(bomb, dest, budget=1 << 20, max_ratio=10**9)
    assert time.perf_counter() - t0 < 5
    assert sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) == 0


def test_yolo_and_sd_uploads_refuse_bombs_and_name_the_budget(tmp_path):
    from tabs.sd.dataset import prepare_dataset
    from tabs.yolo.dataset import DatasetStore

    bomb = _bomb(tmp_path / "bomb.zip")
    ds = DatasetStore(tmp_path / "home" / "yolo" / "datasets").create("d")
    work = tmp_path / "home" / "work"
    work.mkdir()
    rep = ds.add_files([bomb], work)
    assert any("zip bomb" in p for p in rep.problems) and ds.counts() == (0, 0)
    rep = ds.add_files([_declared_big(tmp_path / "claims.zip")], work)
    assert any("STUDIO_EXTRACT_BUDGET" in p for p in rep.problems)
    with pytest.raises(ValueError, match="zip bomb"):
        prepare_dataset([bomb], tmp_path / "home" / "uploads" / "sd" / "p1", size=64)
    assert not any(f.stat().st_size > 1 << 20 for f in tmp_path.rglob("*") if f.is_file()
                   and f.name != "bomb.zip")


def test_the_yaml_alias_bomb_is_refused_quickly(tmp_path):
    from tabs.yolo.dataset import DatasetStore

    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)) + "names: [*i]\ntrain: images\n"
    assert len(bomb) < 1000
    with pytest.raises(ValueError, match="aliases"):
        safety.safe_yaml(bomb)
    with pytest.raises(ValueError, match="once aliases are expanded"):
        safety.safe_yaml(bomb, max_aliases=10**6)
    zpath = tmp_path / "ds.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("data.yaml", bomb)
    ds = DatasetStore(tmp_path / "datasets").create("d")
    t0 = time.perf_counter()
    rep = ds.add_files([zpath], tmp_path)
    assert time.perf_counter() - t0 < 5
    assert any("aliases" in p for p in rep.problems) and ds.classes == []


def test_uploads_are_content_addressed_and_runs_keep_their_own_copy(tmp_path):
    from tabs.qlora import service as qservice

    studio = SimpleNamespace(settings=_home(tmp_path))
    a, b = tmp_path / "a" / "train_good.jsonl", tmp_path / "b" / "train_good.jsonl"
    for p, n in ((a, 20), (b, 3)):
        p.parent.mkdir()
        p.write_text("".join(json.dumps({"instruction": f"q{i}", "output": "a"}) + "\n"
                             for i in range(n)))
    first, second = qservice.store_upload(studio, str(a)), qservice.store_upload(studio, str(b))
    assert first != second and Path(first).read_text() == a.read_text()  # both kept
    assert qservice.store_upload(studio, str(a)) == first  # the same file once
    run = tmp_path / "home" / "runs" / "r1"
    frozen = safety.freeze_input(first, run)
    assert frozen.is_relative_to(run) and frozen.read_text() == a.read_text()
    Path(first).unlink()  # whatever happens to the upload later...
    assert safety.freeze_input(first, run).read_text() == a.read_text()  # ...resume keeps it

    # RAG: two notes.md from different folders are both kept, under distinct names.
    n1, n2 = tmp_path / "x" / "notes.md", tmp_path / "y" / "notes.md"
    for p, text in ((n1, "# one\nalpha"), (n2, "# two\nbeta")):
        p.parent.mkdir()
        p.write_text(text)
    staged = safety.stage_uploads([n1, n2, n1], tmp_path / "home" / "uploads" / "rag")
    assert len(staged) == 2 and len({s.name for s in staged}) == 2
    assert sorted(s.read_text() for s in staged) == sorted([n1.read_text(), n2.read_text()])


def test_two_sd_preparations_in_the_same_second_keep_their_own_folders(tmp_path):
    from PIL import Image

    from tabs.sd import service

    studio = SimpleNamespace(settings=_home(tmp_path))
    imgs = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.new("RGB", (96, 96), (40 * i, 80, 120)).save(p)
        imgs.append(str(p))
    d1 = service.prepare(studio, imgs[:1], 64, "a photo")
    d2 = service.prepare(studio, imgs[1:], 64, "a photo")
    assert d1.folder != d2.folder
    assert all((d1.folder / it.file_name).exists() for it in d1.items)


def _png_claiming(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    from PIL import Image

    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17]))
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def test_decompression_bomb_images_and_bad_zips_get_a_reason(tmp_path):
    from tabs.sd.dataset import prepare_dataset
    from tabs.yolo.dataset import DatasetStore

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(40000, 40000))
    good = tmp_path / "good.png"
    from PIL import Image

    Image.new("RGB", (96, 96), "white").save(good)
    ds = DatasetStore(tmp_path / "datasets").create("d")
    rep = ds.add_files([bomb, good], tmp_path)
    assert rep.added == ["good.png"] and any("bomb.png" in p for p in rep.problems)
    out = prepare_dataset([bomb, good], tmp_path / "sd", size=64, instance_prompt="x")
    assert len(out.items) == 1 and any(s.name == "bomb.png" for s in out.skipped)
    fake = tmp_path / "fake.zip"
    fake.write_text("not a zip")
    with pytest.raises(ValueError, match="not a valid zip file"):
        prepare_dataset([fake], tmp_path / "sd2", size=64, instance_prompt="x")


# ----- 4. settings and labels -------------------------------------------------------------------
_CONFIGS = {"qlora": ("tabs.qlora.config", "QLoRAConfig", {"base_model": "org/m"}),
            "sd": ("tabs.sd.config", "SDTrainConfig", {}),
            "yolo": ("tabs.yolo.config", "TrainConfig", {"data": "d"}),
            "tinygpt": ("tabs.tinygpt.config", "TinyGPTConfig", {})}


@pytest.mark.parametrize("kind, values, label", [
    ("qlora", {"epochs": 1e9}, "epochs"),
    ("qlora", {"lora_r": 10**9}, "LoRA rank"),
    ("qlora", {"target_modules": "../../x;rm -rf /"}, "target modules"),
    ("qlora", {"max_seq_length": 0}, "max sequence length"),
    ("qlora", {"max_seq_length": -1}, "max sequence length"),
    ("qlora", {"max_seq_length": 10**12}, "max sequence length"),
    ("sd", {"learning_rate": -1}, "learning rate (UNet)"),
    ("sd", {"noise_offset": 1e9}, "noise offset"),
    ("yolo", {"imgsz": 320_000_000}, "image size"),
    ("yolo", {"epochs": float("nan")}, "epochs"),
    ("tinygpt", {"n_layer": 10**6}, "Layers must be between 1 and 48"),
])
def test_out_of_range_settings_are_refused_with_the_fields_label(kind, values, label):
    import importlib
    import re

    module, cls, base = _CONFIGS[kind]
    cfg = getattr(importlib.import_module(module), cls)(**base, **values)
    with pytest.raises(ValueError, match="(?i)" + re.escape(label)):
        cfg.validate()


def test_api_values_get_the_same_labelled_messages_as_the_form(tmp_path):
    from tabs.qlora.config import QLoRAConfig

    with pytest.raises(ValueError, match="LoRA rank must be a finite number"):
        QLoRAConfig.coerce("lora_r", float("nan"))
    with pytest.raises(ValueError, match="unknown QLoRA settings"):
        QLoRAConfig.from_dict({"base_model": "org/m", "bogus": 1})
    with pytest.raises(ValueError, match="Learning rate must be a number"):
        QLoRAConfig.from_dict({"base_model": "org/m", "learning_rate": "fast"})


def test_yolo_boxes_nan_and_off_image_are_refused_and_label_rows_are_kept_one_by_one(tmp_path):
    from PIL import Image

    from tabs.yolo.dataset import DatasetStore
    from tabs.yolo.formats import Box

    ds = DatasetStore(tmp_path / "datasets").create("d", ["cat"])
    img = tmp_path / "a.png"
    Image.new("RGB", (100, 50)).save(img)
    name = ds.add_image(img)
    with pytest.raises(ValueError, match="finite"):
        ds.set_boxes(name, [Box(0, float("nan"), 0, 10, 10)])
    with pytest.raises(ValueError, match="outside the 100x50 image"):
        ds.set_boxes(name, [Box(0, 500, 500, 600, 600)])
    assert ds.boxes(name) is None  # nothing stored, still unlabelled
    for bad in ("", ["a.png"]):
        with pytest.raises(ValueError, match="pick an image"):
            ds.set_boxes(bad, [])

    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.new("RGB", (100, 100)).save(root / "images" / "b.png")
    (root / "labels" / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n0 nan 0.5 0.1 0.1\n"
                                           "7 0.5 0.5 0.1 0.1\n0 0.3 0.3 0.2 0.2\n")
    (root / "data.yaml").write_text("names: [cat]\ntrain: images\n")
    rep = ds.import_yolo(root / "data.yaml")
    assert len(ds.boxes("b.png")) == 2  # the good rows
    assert sum("b.txt: line" in p for p in rep.problems) == 2  # each bad row, by line
    assert any("line 2" in p for p in rep.problems) and any("line 3" in p for p in rep.problems)


def test_coco_image_of_width_zero_is_reported_not_a_crash(tmp_path):
    from PIL import Image

    from tabs.yolo.dataset import DatasetStore

    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    Image.new("RGB", (20, 20)).save(tmp_path / "b.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 0, "height": 20},
                       {"id": 2, "file_name": "b.png", "width": 20, "height": 20}],
            "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5]}],
            "categories": [{"id": 1, "name": "dot"}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    ds = DatasetStore(tmp_path / "datasets").create("d")
    rep = ds.import_coco(tmp_path / "c.json", tmp_path)
    assert rep.labelled == ["b.png"] and any("positive width" in p for p in rep.problems)


def test_reranker_folder_must_be_a_model_folder(tmp_path):
    with pytest.raises(ValueError, match="not a model folder"):
        safety.check_model_source("/etc", label="Reranker", need=("config.json",))


# ----- 5. handler errors ------------------------------------------------------------------------
def test_unexpected_exceptions_become_messages_that_name_the_action(tmp_path):
    import gradio as gr

    from studio.ui.errors import friendly, guard_app

    @friendly(inputs="'Boxes (JSON)'")
    def yolo_set_boxes(x):
        raise {"zero": ZeroDivisionError("division by zero"), "key": KeyError("xmin"),
               "int": ValueError("invalid literal for int() with base 10: 'x'"),
               "deep": RecursionError("maximum recursion depth exceeded"),
               "user": ValueError("box 1 lies outside the 100x50 image")}[x]

    msgs = {}
    for k in ("zero", "key", "int", "deep", "user"):
        with pytest.raises(gr.Error) as e:
            yolo_set_boxes(k)
        msgs[k] = e.value.message
    assert "Yolo set boxes failed" in msgs["zero"] and "Boxes (JSON)" in msgs["zero"]
    assert "unknown or missing 'xmin'" in msgs["key"]
    assert "numbers where numbers are asked for" in msgs["int"]
    assert "nested too deeply" in msgs["deep"]
    assert msgs["user"] == "box 1 lies outside the 100x50 image"

    def stream(n):
        yield 1
        raise TypeError("'NoneType' object has no attribute 'tokenize'")

    with gr.Blocks() as app:
        t = gr.Textbox(label="Run")
        gr.Button().click(stream, [t], [t], api_name="qlora_cancel")
    guard_app(app)
    fn = next(iter(app.fns.values())).fn
    it = fn("x")
    assert next(it) == 1
    with pytest.raises(gr.Error, match="Qlora cancel: a required input is empty"):
        next(it)


# ----- 6. resource use --------------------------------------------------------------------------
def test_qlora_validate_refuses_a_30mb_single_line_quickly(tmp_path):
    import tracemalloc

    from tabs.qlora import dataset as data

    big = tmp_path / "one_line.jsonl"
    with open(big, "w") as f:
        f.write('{"instruction": "' + "x" * (30 << 20) + '", "output": "y"}')
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="line 1 .* longer than"):
        data.load_records(big)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 3 and peak < 16 << 20
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"instruction": "q", "output": "a"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    ds = data.load_records(deep)
    assert len(ds.conversations) == 1 and "nested too deeply" in str(ds.problems[0])


def test_a_typed_folder_is_never_the_studios_own_data(tmp_path):
    """RAG folder ingest, the Tiny GPT corpus folder and SD class images take a folder inside the
    home: never the home itself or its runs/chats/secrets (on a shared link: everyone's work)."""
    from studio.safety import STUDIO_DATA, user_folder

    home = tmp_path / "home"
    for name in (*STUDIO_DATA, ".hidden", "notes", "notes/sub"):
        (home / name).mkdir(parents=True)
    (home / "chats" / "abc").mkdir()
    assert user_folder(home, "notes") == (home / "notes").resolve()
    assert user_folder(home, str(home / "notes" / "sub")) == (home / "notes" / "sub").resolve()
    for bad in (".", str(home), "chats", "chats/abc", "runs", "secrets", "models", ".hidden",
                "notes/../runs"):
        with pytest.raises(ValueError, match="studio's own data"):
            user_folder(home, bad)
    with pytest.raises(ValueError, match="outside the studio home"):
        user_folder(home, "../elsewhere")
    (home / "notes" / "f.txt").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        user_folder(home, "notes/f.txt")
