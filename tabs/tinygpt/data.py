"""Corpora and tokenizers for the Tiny GPT lab.

A corpus is plain text gathered from one of three places: the Python standard library's own
source files (every machine with Python has them, so the lab works offline), a folder under the
studio home (for example the RAG knowledge base), or an upload (a text file or a zip of them).
Files that are empty, binary, too large or (in a zip) point outside the archive are skipped, and
the reason is kept so the UI can say why.

Tokenizers come from Hugging Face's `tokenizers` library: character-level (a word-level model over
single characters) or byte-level BPE trained on the corpus at a chosen vocabulary size.
"""

from __future__ import annotations

import os
import sysconfig
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from studio.safety import user_folder

MAX_FILE_BYTES = 20 * 1024 * 1024  # one file bigger than this is skipped, not half-read
DOC_SEPARATOR = "\n\n"
UNK = "[UNK]"


@dataclass
class Corpus:
    """Text to train on, where it came from, and what was left out (with why)."""

    name: str
    text: str
    sources: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    truncated: bool = False

    def summary(self) -> str:
        s = (f"{self.name}: {len(self.sources)} files, {len(self.text):,} characters"
             + (" (capped)" if self.truncated else ""))
        if self.skipped:
            s += f"; skipped {len(self.skipped)}"
        return s


# ----- reading text ------------------------------------------------------------------------------
def decode_text(data: bytes) -> tuple[str | None, str]:
    """Text of a file, or None and the reason it is not usable text."""
    if not data.strip():
        return None, "empty"
    if b"\0" in data[:8192]:
        return None, "binary (contains NUL bytes)"
    try:
        return data.decode("utf-8"), ""
    except UnicodeDecodeError:
        return None, "not UTF-8 text (binary?)"


def _gather(items, name: str, max_chars: int) -> Corpus:
    """Join (label, bytes-or-reason) items into a corpus until `max_chars`."""
    corpus = Corpus(name=name, text="")
    parts: list[str] = []
    size = 0
    for label, data in items:
        if isinstance(data, str):  # already a skip reason
            corpus.skipped.append((label, data))
            continue
        text, reason = decode_text(data)
        if text is None:
            corpus.skipped.append((label, reason))
            continue
        if size + len(text) > max_chars:
            text = text[: max_chars - size]
            corpus.truncated = True
        parts.append(text)
        corpus.sources.append(label)
        size += len(text) + len(DOC_SEPARATOR)
        if size >= max_chars:
            corpus.truncated = True
            break
    corpus.text = DOC_SEPARATOR.join(parts)
    return corpus


def _file_items(paths: list[Path], root: Path):
    for p in paths:
        label = str(p.relative_to(root))
        try:
            if p.stat().st_size > MAX_FILE_BYTES:
                yield label, f"too large (over {MAX_FILE_BYTES // 2**20} MiB)"
                continue
            yield label, p.read_bytes()
        except OSError as e:
            yield label, f"unreadable ({e.strerror or e})"


def stdlib_corpus(max_chars: int = 2_000_000) -> Corpus:
    """The ``.py`` files of the running Python's standard library, in a fixed order (tests and
    site-packages excluded), so every machine has the same offline "code tokens" corpus."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py")
                   if not {"site-packages", "dist-packages", "test", "tests", "idlelib"}
                   & set(p.relative_to(root).parts))
    return _gather(_file_items(paths, root), f"Python {sysconfig.get_python_version()} "
                   "standard library", max_chars)


def resolve_under(path: str | Path, home: Path) -> Path:
    """A user-given folder, refused unless it lies inside the studio home (the app may be shared
    with others, who must not read arbitrary files of the host)."""
    return user_folder(home, path, label="Corpus folder")


def folder_corpus(folder: Path, max_chars: int = 2_000_000) -> Corpus:
    """Every file under `folder` (hidden ones excluded) that reads as text."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    inside = folder.resolve()
    paths, outside = [], []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        # A link inside the folder may point anywhere (/etc/passwd): only files that really
        # are inside it are read.
        (paths if p.resolve().is_relative_to(inside) else outside).append(p)
    corpus = _gather(_file_items(paths, folder), f"folder {folder.name}", max_chars)
    corpus.skipped += [(str(p.relative_to(folder)), "a link to a file outside the folder; "
                        "not read") for p in outside]
    if not corpus.text.strip():
        raise ValueError(f"no usable text in {folder}" + _skip_note(corpus))
    return corpus


def _zip_items(path: Path):
    with zipfile.ZipFile(path) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            name = info.filename
            if info.is_dir():
                continue
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                yield name, "unsafe path (zip-slip): it points outside the archive"
                continue
            if info.file_size > MAX_FILE_BYTES:
                yield name, f"too large (over {MAX_FILE_BYTES // 2**20} MiB)"
                continue
            yield name, zf.read(info)


def upload_corpus(path: Path, max_chars: int = 2_000_000) -> Corpus:
    """A text file, or a zip of text/code files (read in memory: nothing is extracted)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path.name} is not a file")
    if zipfile.is_zipfile(path):
        try:
            corpus = _gather(_zip_items(path), f"zip {path.name}", max_chars)
        except zipfile.BadZipFile as e:
            raise ValueError(f"{path.name} is a damaged zip: {e}") from None
    else:
        corpus = _gather(_file_items([path], path.parent), f"file {path.name}", max_chars)
    if not corpus.text.strip():
        raise ValueError(f"no usable text in {path.name}" + _skip_note(corpus))
    return corpus


def _skip_note(corpus: Corpus) -> str:
    if not corpus.skipped:
        return ""
    shown = "; ".join(f"{n}: {r}" for n, r in corpus.skipped[:5])
    return f" (skipped {shown})"


def load_corpus(kind: str, path: str, max_chars: int) -> Corpus:
    if kind == "stdlib":
        return stdlib_corpus(max_chars)
    if kind == "folder":
        return folder_corpus(Path(path), max_chars)
    if kind == "upload":
        return upload_corpus(Path(path), max_chars)
    raise ValueError(f"unknown corpus {kind!r}")


# ----- tokenizers --------------------------------------------------------------------------------
def train_char_tokenizer(text: str) -> Tokenizer:
    """One token per character seen in the corpus (plus [UNK] for characters it never had)."""
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # join characters back without spaces
    trainer = trainers.WordLevelTrainer(vocab_size=1_000_000, min_frequency=1,
                                        special_tokens=[UNK], show_progress=False)
    tok.train_from_iterator(_chunks(text), trainer=trainer)
    return tok


def train_bpe_tokenizer(text: str, vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2 style): starts from the 256 bytes, so any text can be encoded, then
    merges the most frequent pairs until `vocab_size`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_chunks(text), trainer=trainer)
    return tok


def train_tokenizer(text: str, kind: str, vocab_size: int = 2048) -> Tokenizer:
    if kind == "char":
        return train_char_tokenizer(text)
    if kind == "bpe":
        return train_bpe_tokenizer(text, vocab_size)
    raise ValueError(f"unknown tokenizer {kind!r}")


def _chunks(text: str, size: int = 1 << 16) -> list[str]:
    """Pieces of about `size` characters cut at line ends: the tokenizer works per piece, and a
    whole corpus as one string would cost a lot of memory."""
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            nl = text.rfind("\n", start, end)
            end = nl + 1 if nl > start else end
        out.append(text[start:end])
        start = end
    return out


def encode(tok: Tokenizer, text: str) -> np.ndarray:
    """Token ids of a whole corpus (int32)."""
    ids: list[int] = []
    for enc in tok.encode_batch(_chunks(text), add_special_tokens=False):
        ids.extend(enc.ids)
    return np.asarray(ids, dtype=np.int32)


def tokenizer_stats(tok: Tokenizer, text: str, ids: np.ndarray | None = None) -> dict[str, float]:
    """How much the tokenizer compresses the corpus: characters and UTF-8 bytes per token."""
    n = len(ids) if ids is not None else len(encode(tok, text))
    return {"vocab_size": tok.get_vocab_size(), "tokens": n, "characters": len(text),
            "chars_per_token": len(text) / max(1, n),
            "bytes_per_token": len(text.encode("utf-8")) / max(1, n)}


# ----- batches -----------------------------------------------------------------------------------
def split_ids(ids: np.ndarray, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Train on the first part, validate on the last (never seen in training)."""
    n_val = int(len(ids) * val_fraction)
    data = torch.from_numpy(ids.astype(np.int64))
    return data[: len(ids) - n_val], data[len(ids) - n_val:]


def get_batch(data: torch.Tensor, block_size: int, batch_size: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of `block_size` tokens (x) and the same windows shifted by one (y)."""
    if len(data) <= block_size + 1:
        raise ValueError(f"{len(data)} tokens is too few for a context of {block_size}; use a "
                         "bigger corpus or a shorter context")
    starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
    x = torch.stack([data[i: i + block_size] for i in starts.tolist()])
    y = torch.stack([data[i + 1: i + 1 + block_size] for i in starts.tolist()])
    return x, y


def save_token_ids(path: Path, train: torch.Tensor, val: torch.Tensor) -> None:
    tmp = Path(str(path) + ".tmp")
    torch.save({"train": train.to(torch.int32), "val": val.to(torch.int32)}, tmp)
    os.replace(tmp, path)


def load_token_ids(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.load(path, weights_only=True)
    return d["train"].long(), d["val"].long()
