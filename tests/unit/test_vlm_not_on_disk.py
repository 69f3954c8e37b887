"""Issue #18 in the Vision tab: a hub id that is not on disk is never downloaded inside a request;
the tab says so and points to the Models tab. A hub id in the hub cache loads from its snapshot
folder; a local folder is used as it is; "Will it fit?" still answers for catalogue models
from their known shapes, without their files."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.hub import NotOnDisk
from tabs.vlm import service
from tabs.vlm.service import VLMChatConfig

HUB_VLM = "llava-hf/llava-1.5-7b-hf"  # in the catalogue


@pytest.fixture
def no_loads(monkeypatch):
    """Fail the test if anything asks transformers for a model, processor or config."""
    import transformers

    def refuse(*a, **k):
        raise AssertionError(f"from_pretrained called in a request: {a[:1]}")

    for name in ("AutoProcessor", "AutoConfig", "AutoModelForImageTextToText",
                 "AutoModelForVision2Seq", "AutoTokenizer"):
        cls = getattr(transformers, name, None)
        if cls is not None:
            monkeypatch.setattr(cls, "from_pretrained", refuse)


def test_a_hub_vlm_not_on_disk_says_models_tab_and_loads_nothing(studio, empty_cache, no_loads):
    cfg = VLMChatConfig(model=HUB_VLM, quantization="fp32")
    with pytest.raises(NotOnDisk, match="vision model.*not on disk yet.*Models tab"):
        service.preload(studio, cfg)
    with pytest.raises(NotOnDisk, match="Models tab"):
        list(service.stream_reply(studio, cfg, [], "Describe it.", []))
    # "Will it fit?" answers from the catalogue's shapes, without the files
    assert "GiB" in service.chat_fit(studio, cfg)
    # grounding of a pasted answer needs no model: boxes are taken as picture pixels
    from PIL import Image

    assert service.model_input_size(studio, cfg, Image.new("RGB", (64, 48))) is None


def test_a_hub_vlm_in_the_cache_loads_from_its_snapshot(studio, empty_cache, tmp_path):
    from tabs.vlm.tiny import make_tiny_vlm

    folder = make_tiny_vlm(tmp_path / "tiny", "qwen2-vl", seed=1)
    sha = "0123456789abcdef0123456789abcdef01234567"
    storage = empty_cache / "models--acme--tiny-vl"
    snap = storage / "snapshots" / sha
    snap.mkdir(parents=True)
    for f in Path(folder).iterdir():
        (snap / f.name).symlink_to(f.resolve())
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(sha)
    src = service.source_for(studio, VLMChatConfig(model="acme/tiny-vl", quantization="fp32"))
    assert src.source == str(snap) and src.title == "tiny-vl"
    assert "Loaded **tiny-vl**" in service.preload(
        studio, VLMChatConfig(model="acme/tiny-vl", quantization="fp32"))


def test_a_local_vlm_folder_is_used_as_it_is(studio, empty_cache, tmp_path):
    src = service.source_for(studio, VLMChatConfig(model=str(tmp_path), quantization="fp32"))
    assert src.source == str(tmp_path)


def test_the_adapt_base_model_is_checked_on_disk_before_data_check_and_start(studio, empty_cache,
                                                                            tmp_path):
    from tabs.vlm.ui import _on_disk

    with pytest.raises(NotOnDisk, match="base model.*Models tab"):
        _on_disk(studio, "Qwen/Qwen2.5-VL-3B-Instruct")
    assert _on_disk(studio, str(tmp_path)) == str(tmp_path)
    assert _on_disk(studio, "") == ""
