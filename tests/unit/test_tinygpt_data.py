"""Tiny GPT corpora and tokenizers: uploads are read safely, tokenizers round-trip text."""

from __future__ import annotations

import zipfile

import pytest

from tabs.tinygpt import data as D
from tabs.tinygpt.config import TinyGPTConfig


def test_zip_upload_skips_unsafe_binary_and_empty_files_with_reasons(tmp_path):
    z = tmp_path / "corpus.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("good/a.py", "def a():\n    return 1\n")
        zf.writestr("b.txt", "hello tiny gpt\n")
        zf.writestr("../../evil.txt", "escape attempt")
        zf.writestr("/abs.txt", "absolute path")
        zf.writestr("img.png", b"\x89PNG\r\n\x1a\n\0\0\0IHDR")
        zf.writestr("empty.txt", "")
        zf.writestr("latin1.txt", "caf\xe9".encode("latin-1"))
    corpus = D.upload_corpus(z)
    assert corpus.sources == ["b.txt", "good/a.py"]
    assert "hello tiny gpt" in corpus.text and "def a()" in corpus.text
    assert "escape" not in corpus.text and "absolute" not in corpus.text
    reasons = dict(corpus.skipped)
    assert "zip-slip" in reasons["../../evil.txt"] and "zip-slip" in reasons["/abs.txt"]
    assert reasons["img.png"].startswith("binary")
    assert reasons["empty.txt"] == "empty"
    assert "UTF-8" in reasons["latin1.txt"]
    assert not (tmp_path.parent / "evil.txt").exists()  # nothing was extracted anywhere


def test_upload_with_no_usable_text_is_refused_with_the_reason(tmp_path):
    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("x.bin", b"\0\1\2\3")
    with pytest.raises(ValueError, match="binary"):
        D.upload_corpus(z)
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(ValueError, match="no usable text"):
        D.upload_corpus(empty)


def test_folder_must_be_inside_the_studio_home(tmp_path):
    home = tmp_path / "home"
    kb = home / "notes" / "kb"  # a folder of the person's own (not the studio's data)
    kb.mkdir(parents=True)
    (kb / "notes.md").write_text("# Notes\nsome text\n")
    (kb / ".hidden").write_text("secret")
    assert D.resolve_under("notes/kb", home) == kb.resolve()
    with pytest.raises(ValueError, match="outside the studio home"):
        D.resolve_under(tmp_path, home)
    with pytest.raises(ValueError, match="outside the studio home"):
        D.resolve_under(home / ".." / "elsewhere", home)
    corpus = D.folder_corpus(kb)
    assert corpus.sources == ["notes.md"] and "secret" not in corpus.text


def test_stdlib_corpus_is_python_code_and_capped():
    corpus = D.stdlib_corpus(max_chars=50_000)
    assert len(corpus.text) <= 50_000 and corpus.truncated
    assert "def " in corpus.text and "import " in corpus.text


def test_char_tokenizer_round_trips_and_counts_one_token_per_character():
    text = "def f(x):\n    return x * 2  # twice\n"
    tok = D.train_char_tokenizer(text * 3)
    ids = D.encode(tok, text)
    assert len(ids) == len(text)
    assert tok.decode(ids.tolist()) == text
    assert tok.get_vocab_size() == len(set(text)) + 1  # + [UNK]


def test_bpe_tokenizer_compresses_and_round_trips_any_text():
    text = D.stdlib_corpus(max_chars=60_000).text
    tok = D.train_bpe_tokenizer(text, vocab_size=512)
    ids = D.encode(tok, text)
    stats = D.tokenizer_stats(tok, text, ids)
    assert tok.get_vocab_size() == 512
    assert stats["chars_per_token"] > 2.0  # merges make tokens longer than a character
    unseen = "naïve ☃ text never in the corpus\n"
    assert tok.decode(tok.encode(unseen).ids) == unseen  # bytes cover everything


def test_batches_are_windows_shifted_by_one():
    import numpy as np
    import torch

    train, val = D.split_ids(np.arange(100, dtype=np.int32), 0.2)
    assert len(train) == 80 and val[0].item() == 80
    x, y = D.get_batch(train, 8, 4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 8) and torch.equal(y, x + 1)
    with pytest.raises(ValueError, match="too few"):
        D.get_batch(train[:5], 8, 1)


@pytest.mark.parametrize("change, message", [
    ({"n_embd": 30, "n_head": 4}, "divisible"),
    ({"pos": "sinusoid"}, "positional scheme"),
    ({"corpus": "upload"}, "needs a file"),
    ({"tokenizer": "bpe", "vocab_size": 100}, "BPE vocabulary"),
    ({"block_size": 0}, "Context"),
])
def test_config_rejects_settings_that_cannot_work(change, message):
    with pytest.raises(ValueError, match=message):
        TinyGPTConfig.from_dict(change)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown"):
        TinyGPTConfig.from_dict({"n_layers": 4})
