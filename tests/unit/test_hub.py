"""studio.hub and the Models tab logic without a network: what a download would fetch, model
sources, the token file, saved choices, and --offline never touching the hub."""

from __future__ import annotations

import os

import pytest

from studio import hub
from studio.config import Settings
from studio.context import build_studio
from tests.fakehub import FakeHub, FakeRepo, point_client_at


def _files(*names):
    return [{"path": n, "size": 10} for n in names]


def test_pick_files_takes_what_a_loader_reads():
    llama = _files("config.json", "model-00001-of-00002.safetensors",
                   "model-00002-of-00002.safetensors", "pytorch_model.bin",
                   "original/consolidated.00.pth", "README.md", ".gitattributes",
                   "tokenizer.json", "flax_model.msgpack")
    assert [f["path"] for f in hub.pick_files(llama)] == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "tokenizer.json"]
    sd = _files("model_index.json", "v1-5-pruned.safetensors", "unet/config.json",
                "unet/diffusion_pytorch_model.safetensors",
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "unet/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.safetensors")
    assert [f["path"] for f in hub.pick_files(sd)] == [
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors"]
    ggufs = _files("config.json", "m.Q4_K_M.gguf", "m.Q8_0.gguf")
    with pytest.raises(hub.HubError, match="several GGUF files.*org/name:FILE"):
        hub.pick_files(ggufs)
    assert [f["path"] for f in hub.pick_files(ggufs, filename="m.Q8_0.gguf")] == [
        "config.json", "m.Q8_0.gguf"]
    with pytest.raises(hub.HubError, match="not a file of this repository"):
        hub.pick_files(ggufs, filename="nope.gguf")


def test_parse_source_kinds_and_refusals(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"x")
    assert hub.parse_source("meta-llama/Llama-3.1-8B-Instruct").kind == "hub"
    s = hub.parse_source("org/repo:sub/m.Q4_K_M.gguf")
    assert (s.kind, s.repo, s.filename) == ("hub", "org/repo", "sub/m.Q4_K_M.gguf")
    assert hub.parse_source(str(tmp_path)).kind == "folder"
    assert hub.parse_source(str(tmp_path / "m.gguf")).kind == "file"
    assert hub.parse_source("large-v3").kind == "name"
    for bad, why in [("", "Enter a hub id"), ("/no/such/dir", "No such model file"),
                     ("org/repo:../../etc/passwd", "after the ':'"),
                     ("a/b/c d", "not a hub id"), ("x\n/y", "not a hub id")]:
        with pytest.raises(hub.HubError, match=why):
            hub.parse_source(bad)


def test_token_file_is_private_and_hf_token_is_the_fallback(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    store = hub.TokenStore(tmp_path)
    assert store.get() is None and "No token" in store.describe()
    monkeypatch.setenv("HF_TOKEN", "hf_fromenvironment123")
    assert store.get() == "hf_fromenvironment123" and "HF_TOKEN" in store.describe()
    with pytest.raises(hub.HubError) as e:
        store.save("hf_secret but with spaces")
    assert "secret" not in str(e.value)  # what was typed is never echoed
    store.save("  hf_savedtoken4567  ")
    assert store.get() == "hf_savedtoken4567"  # the saved one wins over the environment
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    assert "hf_savedtoken4567" not in store.describe()
    store.clear()
    assert store.get() == "hf_fromenvironment123"


def test_a_choice_is_saved_and_every_new_studio_uses_it(tmp_path):
    from tabs.models import service

    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    s = build_studio(Settings(home=tmp_path / "home", profile="small"), start_jobs=False)
    try:
        msg = service.choose(s, "chat", str(folder), "fp32")
        assert "it is on disk" in msg and s.choices["chat"].source == str(folder)
    finally:
        s.close()
    s2 = build_studio(Settings(home=tmp_path / "home", profile="small"), start_jobs=False)
    try:
        assert s2.choices["chat"].source == str(folder)
        assert s2.choices["chat"].quantization == "fp32"
        assert s2.choices["embedder"].title == "all-MiniLM-L6-v2"  # the others untouched
    finally:
        s2.close()


def test_offline_shows_what_is_on_disk_and_never_calls_the_hub(tmp_path, monkeypatch):
    from tabs.chat import service as chat
    from tabs.models import service

    fake = FakeHub().start()
    try:
        fake.add(FakeRepo("org/remote", {"config.json": b"{}", "model.safetensors": b"x" * 99}))
        point_client_at(monkeypatch, fake, tmp_path / "cache")
        s = build_studio(Settings(home=tmp_path / "home", profile="small", offline=True),
                         start_jobs=False)
        try:
            with pytest.raises(hub.HubError, match="offline"):
                service.choose(s, "chat", "org/remote")
            from studio.profiles import ModelChoice

            s.choices["chat"] = ModelChoice("chat", "org/remote", "remote model")
            cards = {c.role: c for c in service.cards(s)}
            assert cards["chat"].on_disk is False and cards["chat"].size_from == ""
            assert all(a["on_disk"] for c in cards.values() for a in c.alternatives)
            with pytest.raises(hub.HubError, match="--offline"):
                service.download(s, "chat")
            with pytest.raises(hub.NotOnDisk, match="--offline"):
                chat.engine_for(s, chat.ChatConfig())
        finally:
            s.close()
        assert fake.requests == []  # not one request reached the hub
    finally:
        fake.stop()


def test_precision_variants_are_skipped_when_plain_weights_exist():
    whisper = _files("config.json", "model.safetensors", "model.fp32-00001-of-00002.safetensors",
                     "model.fp32-00002-of-00002.safetensors", "model.safetensors.index.fp32.json")
    assert [f["path"] for f in hub.pick_files(whisper)] == [
        "config.json", "model.safetensors", "model.safetensors.index.fp32.json"]
    only_fp16 = _files("unet/diffusion_pytorch_model.fp16.safetensors", "unet/config.json")
    assert len(hub.pick_files(only_fp16)) == 2  # nothing else to load: kept


def test_a_shared_studio_lets_no_visitor_change_models_token_or_disk(tmp_path):
    from tabs.models import service

    s = build_studio(Settings(home=tmp_path / "home", profile="small", share=True),
                     start_jobs=False)
    try:
        for call in (lambda: service.choose(s, "chat", "org/other"),
                     lambda: service.save_token(s, "hf_strangerstoken123"),
                     lambda: service.forget_token(s),
                     lambda: service.delete(s, "org/other")):
            with pytest.raises(hub.HubError, match="shared .--share."):
                call()
        assert not service.token(s).path.exists()
    finally:
        s.close()


def test_an_unreachable_hub_is_a_plain_sentence(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    from tests.conftest import free_port

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    with pytest.raises(hub.HubError, match="Cannot reach the hub at http://127.0.0.1"):
        hub.repo_plan("org/model", tmp_path)


def test_a_sharded_copy_with_a_missing_shard_is_not_on_disk(tmp_path):
    import json

    snap = tmp_path / "cache" / "models--org--m" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "model-1.safetensors").write_bytes(b"1")
    (snap / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}))
    assert hub.local_path(tmp_path / "home", "org/m", tmp_path / "cache") is None
    (snap / "model-2.safetensors").write_bytes(b"2")
    assert hub.local_path(tmp_path / "home", "org/m", tmp_path / "cache") == snap


def test_training_on_a_hub_base_that_is_not_on_disk_points_to_the_models_tab(studio, tmp_path,
                                                                             monkeypatch):
    from tabs.qlora import service as qlora

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    from tabs.qlora.config import QLoRAConfig
    from tabs.qlora.tiny import fact_records, write_jsonl

    data = write_jsonl(fact_records("alpaca"), tmp_path / "facts.jsonl")
    cfg = QLoRAConfig(base_model="meta-llama/Llama-3.1-8B-Instruct", train_file=str(data))
    with pytest.raises(hub.NotOnDisk, match="not on disk yet.*Models tab"):
        qlora.submit(studio, cfg)
    assert studio.jobs.queue() == []  # nothing started a 16 GB download
