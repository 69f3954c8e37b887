"""Whisper fine-tune settings: what "auto" picks, and a clear reason for every setting or input
that cannot work (before any job starts)."""

from __future__ import annotations

import pytest

from tabs.whisper_ft.config import WhisperFTConfig


def test_auto_method_learning_rate_and_glossary():
    assert WhisperFTConfig(base_model="openai/whisper-small").resolved_method() == "full"
    medium = WhisperFTConfig(base_model="/models/whisper-medium")
    assert medium.resolved_method() == "lora" and medium.resolved_lr() == 1e-3
    assert WhisperFTConfig().resolved_lr() == 1e-5
    g = WhisperFTConfig(glossary="Zorblax, Quindara\nzorblax,  Velmorant ,")
    assert g.glossary_terms() == ["Zorblax", "Quindara", "Velmorant"]


@pytest.mark.parametrize("changes, message", [
    ({"dataset": ""}, "prepare a dataset"),
    ({"base_model": " "}, "choose a base model"),
    ({"method": "qlora"}, "method must be one of auto, full, lora"),
    ({"language": "en; rm -rf"}, "language must be a code"),
    ({"max_steps": 0}, "steps must be at least 1"),
    ({"eval_steps": -1}, "cannot be negative"),
    ({"generation_max_tokens": 1000}, "at most 448 tokens"),
    ({"learning_rate": 5.0}, "learning rate must be in"),
])
def test_bad_settings_have_reasons(changes, message):
    cfg = WhisperFTConfig(**{"dataset": "wds-0123456789ab", **changes})
    with pytest.raises(ValueError, match=message):
        cfg.validate()


def test_submit_refuses_unknown_datasets_and_models(studio, tmp_path):
    from tabs.whisper_ft import service

    with pytest.raises(ValueError, match="not a dataset id"):
        service.submit(studio, WhisperFTConfig(dataset="../../runs"))
    with pytest.raises(ValueError, match="no dataset wds-0123456789ab"):
        service.submit(studio, WhisperFTConfig(dataset="wds-0123456789ab"))
    folder = service.datasets_root(studio) / "wds-0123456789ab"
    folder.mkdir(parents=True)
    (folder / "manifest.jsonl").write_text('{"audio": "pieces/00000.wav", "text": "hi", '
                                           '"seconds": 1.0, "source": "a", "split": "train"}\n')
    with pytest.raises(ValueError, match="Base model: no such file or folder"):
        service.submit(studio, WhisperFTConfig(dataset="wds-0123456789ab",
                                               base_model=str(tmp_path / "nope")))
    assert studio.jobs.list_runs(service.KIND) == []  # nothing was queued
