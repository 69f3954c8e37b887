"""Guards for hostile input, written once and used by every tab.

A shared link hands every field to strangers, so the studio assumes any value may be hostile:

- **Model files** (`check_model_source`, `check_model_file`, `check_model_folder`): safetensors,
  GGUF, ONNX and model folders load; a pickle (``.pt``/``.pth``/``.ckpt``/``.pkl``, or any file
  whose bytes are a pickle, whatever its name) loads only when ``torch.load(weights_only=True)``
  accepts it, or when the user said "I trust this file" for exactly that file (its sha256).
- **Names and paths** (`safe_name`, `path_under`): a user-given name becomes a path under a
  root folder, or is refused; nothing is written outside the studio home.
- **Uploads** (`stage_upload`, `freeze_input`, `safe_extract`, `safe_yaml`): content-addressed
  copies (two uploads never collide), archives checked against a budget by declared *and*
  actual size before anything large is written, YAML without alias bombs.
- **Text** (`read_text_capped`, `check_lines`): size and line-length caps with a reason.

No Gradio here; messages are plain sentences a user can act on.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

GiB = 1 << 30
MiB = 1 << 20

# Defaults; Settings may override the extract budget (--extract-budget / STUDIO_EXTRACT_BUDGET).
DEFAULT_EXTRACT_BUDGET = 2 * GiB
MAX_RATIO = 200  # a member that inflates more than this (and past 1 MiB) is a zip bomb
MAX_MEMBERS = 50_000
MAX_PATH_CHARS = 1024
MAX_NAME_CHARS = 100
YAML_MAX_BYTES = 1 * MiB
YAML_MAX_ALIASES = 50
YAML_MAX_NODES = 100_000
BUDGET_SETTING = "--extract-budget (STUDIO_EXTRACT_BUDGET)"


def extract_budget(settings: Any) -> int:
    """The archive budget the studio was started with (Settings.extract_budget)."""
    return int(getattr(settings, "extract_budget", None) or DEFAULT_EXTRACT_BUDGET)


def _size(n: float) -> str:
    from studio.config import format_bytes

    return format_bytes(n)


# ----- model files ------------------------------------------------------------------------------
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".joblib")
SAFE_SUFFIXES = (".safetensors", ".gguf", ".onnx")
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?")


class UnsafeModelFile(ValueError):
    """A file that would run code when loaded, and that the user has not said they trust."""


def sniff_pickle(path: Path) -> bool:
    """True when the bytes are a pickle or a torch.save zip, whatever the file is called.

    CTranslate2's ``model.bin`` (faster-whisper) is not a pickle and is not flagged."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True  # pickle protocol 2-5 (legacy torch.save too)
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                return any(n.endswith("data.pkl") for n in zf.namelist()[:64])
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def is_pickle_file(path: Path) -> bool:
    path = Path(path)
    if path.suffix.lower() in (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib"):
        return True
    return sniff_pickle(path)


def weights_only_loadable(path: Path, allow: Iterable[str] = ()) -> bool:
    """Whether ``torch.load(weights_only=True)`` accepts the file: tensors and plain containers
    only, so loading it (with any loader) cannot run code. `allow` adds names (or prefixes
    ending in ".") of plain data classes a library's checkpoints hold, e.g. pyannote's task
    specifications: every callable a pickle can call is one of the globals it names, so a file
    whose globals are all allowed runs nothing else."""
    import pickle

    import torch

    allow = tuple(allow)
    if allow:
        try:
            needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - not a torch zip: the plain check below decides
            needed = None
        if needed is not None:
            return all(n in allow or any(a.endswith(".") and n.startswith(a) for a in allow)
                       for n in needed)
    for mmap in (True, False):
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            return True
        except pickle.UnpicklingError:
            return False  # a global outside the allow-list: exactly what we refuse
        except Exception:  # noqa: BLE001 - legacy format cannot mmap; try once more, then refuse
            continue
    return False


def file_digest(path: Path, chunk: int = 4 * MiB) -> str:
    """sha256 of a file (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def trust_token(path: str | Path) -> str:
    """What a "trust this file" tick records: the sha256 of the file as it was when trusted, so
    the trust covers those bytes only (a file swapped later is checked again)."""
    return file_digest(Path(path))


def _trusted(path: Path, trusted: bool | str) -> bool:
    if isinstance(trusted, str):
        return bool(trusted) and trusted == file_digest(path)
    return bool(trusted)


def _refuse_pickle(path: Path, label: str) -> UnsafeModelFile:
    return UnsafeModelFile(
        f"{label}: {path.name} is a pickle that holds more than plain tensors, so loading it can "
        "run any code it contains. Use a .safetensors/.onnx/.gguf version, or tick "
        "'I trust this file' if you made it yourself.")


def check_model_file(path: str | Path, *, label: str = "Model", trusted: bool | str = False,
                     suffixes: Iterable[str] | None = None) -> Path:
    """Refuse a pickle that could run code unless `trusted` (True, or the file's trust token);
    with `suffixes`, refuse other kinds of file. Returns the path."""
    if len(str(path)) > MAX_PATH_CHARS:
        raise ValueError(f"{label}: {len(str(path))} characters is not a usable path")
    path = Path(path)
    if suffixes is not None:
        allowed = tuple(s.lower() for s in suffixes)
        if path.suffix.lower() not in allowed:
            raise ValueError(f"{label}: {path.name} is not one of {', '.join(allowed)}")
    if not path.is_file():
        raise ValueError(f"{label}: {path} is not a file")
    if is_pickle_file(path) and not _trusted(path, trusted) and not weights_only_loadable(path):
        raise _refuse_pickle(path, label)
    return path


def check_model_folder(folder: str | Path, *, label: str = "Model", trusted: bool = False,
                       max_files: int = 5000, allow: Iterable[str] = (),
                       need: Iterable[str] = ()) -> Path:
    """Every pickle a library could load from the folder must be plain tensors (or trusted);
    `need` names files a model folder of this kind has (e.g. config.json)."""
    folder = Path(folder)
    missing = [n for n in need if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"{label}: {folder} is not a model folder (no {', '.join(missing)})")
    if not trusted:
        for n, f in enumerate(p for p in folder.rglob("*") if p.is_file()):
            if n >= max_files:
                raise ValueError(f"{label}: {folder} holds more than {max_files} files; "
                                 "is it really a model folder?")
            if f.suffix.lower() in SAFE_SUFFIXES or f.suffix.lower() in (".json", ".txt",
                                                                          ".model", ".yaml"):
                continue
            if is_pickle_file(f) and not weights_only_loadable(f, allow):
                raise UnsafeModelFile(
                    f"{label}: {f.relative_to(folder)} in {folder.name} is a pickle that holds "
                    "more than plain tensors; loading it can run any code it contains. Use a "
                    "folder with .safetensors weights.")
    return folder


def check_model_source(value: str, *, label: str = "Model", trusted: bool | str = False,
                       hub: bool = True, suffixes: Iterable[str] | None = None,
                       folders: bool = True, need: Iterable[str] = ()) -> str:
    """A model field's value: an existing file or folder (checked as above) or, with `hub`, a
    hub id ``owner/name``. Returns the cleaned value."""
    text = str(value or "").strip()
    if not text:
        raise ValueError(f"{label}: choose a model")
    if len(text) > MAX_PATH_CHARS or "\x00" in text:
        raise ValueError(f"{label}: {len(text)} characters is not a model path or hub id "
                         f"(at most {MAX_PATH_CHARS})")
    try:
        p = Path(text).expanduser()
        exists = p.exists()
    except (OSError, ValueError):
        exists = False
    if exists:
        if p.is_dir():
            if not folders:
                raise ValueError(f"{label}: {p} is a folder; give a model file")
            check_model_folder(p, label=label, trusted=bool(trusted), need=need)
        else:
            check_model_file(p, label=label, trusted=trusted, suffixes=suffixes)
        return str(p)
    if hub and HUB_ID.fullmatch(text) and ".." not in text:
        return text
    raise ValueError(f"{label}: no such file or folder: {text!r}" +
                     (", and not a hub id like owner/name" if hub else ""))


# ----- names and paths --------------------------------------------------------------------------
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]*")


def safe_name(name: str, *, label: str = "Name", max_chars: int = MAX_NAME_CHARS) -> str:
    """A user-given name that can be one file or folder name: no separators, no ``..``, no
    leading dot, printable. Returns it stripped; raises ValueError saying what to change."""
    text = str(name if name is not None else "").strip()
    if not text:
        raise ValueError(f"{label}: give a name")
    if len(text) > max_chars:
        raise ValueError(f"{label}: at most {max_chars} characters (got {len(text)})")
    if not _NAME.fullmatch(text) or ".." in text:
        raise ValueError(f"{label} {text[:60]!r}: use letters, digits, spaces, '.', '_', '+' or "
                         "'-' only, starting with a letter or digit (no folders, no '..')")
    return text


def path_under(root: str | Path, user_path: str | Path, *, label: str = "Folder",
               must_exist: bool = False) -> Path:
    """`user_path` (absolute, or relative to `root`) resolved with symlinks followed, refused
    unless it lies inside `root`."""
    root_r = Path(root).resolve()
    text = str(user_path or "").strip()
    if not text:
        raise ValueError(f"{label}: give a path inside {root_r}")
    if len(text) > MAX_PATH_CHARS or "\x00" in text:
        raise ValueError(f"{label}: not a usable path ({len(text)} characters)")
    p = Path(text).expanduser()
    p = (p if p.is_absolute() else root_r / p).resolve()
    if not p.is_relative_to(root_r):
        raise ValueError(f"{label}: {text[:200]} is outside the studio home ({root_r}); "
                         "it must be inside the studio home")
    if must_exist and not p.exists():
        raise ValueError(f"{label}: {p} does not exist")
    return p


# The studio's own data under its home: every session's runs, uploads, indexes, exports, saved
# chats, downloaded models and secrets. A folder a person types in (to index, as a corpus, as
# class images) may be any other folder of the home, never these: on a shared link they hold
# other people's work and the studio's token and keys.
STUDIO_DATA = frozenset({"runs", "uploads", "indexes", "exports", "cache", "chats", "models",
                         "secrets"})


def user_folder(home: str | Path, user_path: str | Path, *, label: str = "Folder") -> Path:
    """`path_under(home, ...)` for a folder of the person's own files: an existing folder inside
    the home, not the home itself, not inside the studio's own data (`STUDIO_DATA`, hidden
    names, the files at the home's top level)."""
    p = path_under(home, user_path, label=label, must_exist=True)
    if not p.is_dir():
        raise ValueError(f"{label}: {p} is not a folder")
    rel = p.relative_to(Path(home).resolve()).parts
    if not rel or rel[0] in STUDIO_DATA or rel[0].startswith("."):
        raise ValueError(f"{label}: {p} holds the studio's own data; put your files in a folder "
                         f"of their own inside {Path(home).resolve()} (e.g. notes/)")
    return p


def child_path(root: str | Path, name: str, *, label: str = "Name", suffix: str = "") -> Path:
    """``root / (safe_name(name) + suffix)``, checked to stay inside `root`."""
    return path_under(root, Path(root) / (safe_name(name, label=label) + suffix), label=label)


# ----- uploads ----------------------------------------------------------------------------------
def stage_upload(src: str | Path, dest_root: str | Path, *, label: str = "Upload",
                 max_bytes: int | None = None) -> Path:
    """Copy an upload (a Gradio temp file that may vanish) to ``dest_root/<sha256[:16]>/<name>``.

    Named by content: two different files with the same name never replace each other, and a
    path handed to a job keeps meaning the same bytes. The same file is stored once."""
    src = Path(src)
    if not src.is_file():
        raise ValueError(f"{label}: the uploaded file {src.name} is gone; upload it again")
    size = src.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise ValueError(f"{label}: {src.name} is {_size(size)}, over the {_size(max_bytes)} limit")
    name = src.name if _NAME.fullmatch(src.name) and ".." not in src.name else \
        re.sub(r"[^A-Za-z0-9._+-]", "_", src.name).lstrip("._")[-MAX_NAME_CHARS:] or "upload"
    digest = file_digest(src)[:16]
    dest = Path(dest_root) / digest / name
    if dest.exists() and dest.stat().st_size == size:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".staging-")
    os.close(fd)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return dest


def stage_uploads(paths: Iterable[str | Path], dest_root: str | Path, *,
                  label: str = "Upload") -> list[Path]:
    """`stage_upload` for several files at once, with names kept distinct: two different files
    both called ``notes.md`` (from different folders) become ``notes.md`` and
    ``notes-<hash>.md``; the same file given twice is kept once."""
    out: list[Path] = []
    names: dict[str, Path] = {}
    for src in map(Path, paths):
        staged = stage_upload(src, dest_root, label=label)
        first = names.get(staged.name)
        if first is None:
            names[staged.name] = staged
        elif first.parent == staged.parent:
            continue  # the very same bytes again
        else:
            renamed = staged.with_name(f"{staged.stem}-{staged.parent.name[:8]}{staged.suffix}")
            if not renamed.exists():
                shutil.copyfile(staged, renamed)
            staged = renamed
            names[staged.name] = staged
        out.append(staged)
    return out


def freeze_input(path: str | Path, run_dir: str | Path, *, label: str = "Input") -> Path:
    """The job's own copy of an input file under ``run_dir/inputs/``: made on the first attempt,
    reused on resume, so nothing done later elsewhere changes what the run trains on."""
    src = Path(path)
    inputs = Path(run_dir) / "inputs"
    if src.resolve().is_relative_to(inputs.resolve()):
        return src
    dest = inputs / f"{file_digest(src)[:16]}-{src.name}" if src.is_file() else None
    if dest is None:
        existing = sorted(inputs.glob(f"*-{src.name}")) if inputs.exists() else []
        if existing:
            return existing[0]  # resume after the original was deleted
        raise ValueError(f"{label}: {src} is gone")
    if not dest.exists():
        # A resumed run whose original changed keeps training on its own first copy.
        earlier = sorted(inputs.glob(f"*-{src.name}")) if inputs.exists() else []
        if earlier:
            return earlier[0]
        inputs.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=inputs, prefix=".copy-")
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    return dest


def freeze_folder(folder: str | Path, run_dir: str | Path, *, label: str = "Input folder"
                  ) -> Path:
    """`freeze_input` for a folder (a prepared dataset): copied into ``run_dir/inputs/<name>``
    on the first attempt, reused on resume, so later edits (captions) do not change the run."""
    src = Path(folder)
    dest = Path(run_dir) / "inputs" / src.name
    if dest.is_dir():
        return dest
    if not src.is_dir():
        raise ValueError(f"{label}: {src} is gone")
    tmp = dest.with_name(f".{dest.name}.copy")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, symlinks=True)
    os.replace(tmp, dest)
    return dest


class ArchiveRefused(ValueError):
    """An archive that is too large or looks like a zip bomb; nothing was kept."""


def check_archive(zip_path: str | Path, *, budget: int = DEFAULT_EXTRACT_BUDGET,
                  max_ratio: int = MAX_RATIO, max_members: int = MAX_MEMBERS) -> zipfile.ZipFile:
    """Open a zip and refuse it by its declared sizes before anything is extracted."""
    name = Path(zip_path).name
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise ValueError(f"{name}: not a valid zip file") from None
    infos = zf.infolist()
    if len(infos) > max_members:
        zf.close()
        raise ArchiveRefused(f"{name}: {len(infos)} entries, more than the {max_members} allowed")
    declared = sum(i.file_size for i in infos)
    if declared > budget:
        zf.close()
        raise ArchiveRefused(
            f"{name}: unpacks to {_size(declared)}, over the {_size(budget)} extract budget "
            f"({BUDGET_SETTING}); upload a smaller archive")
    for i in infos:
        if i.file_size > MiB and i.file_size > max_ratio * max(i.compress_size, 1):
            zf.close()
            raise ArchiveRefused(
                f"{name}: {i.filename} inflates {i.file_size // max(i.compress_size, 1)}:1 "
                f"({_size(i.compress_size)} to {_size(i.file_size)}); that is a zip bomb, "
                "not a dataset")
    return zf


def safe_extract(zip_path: str | Path, dest: str | Path, *, budget: int = DEFAULT_EXTRACT_BUDGET,
                 max_ratio: int = MAX_RATIO, flatten: bool = False,
                 skip_hidden: bool = False) -> tuple[list[Path], list[str]]:
    """Extract a zip into `dest`: refused up front by declared size and ratio (ArchiveRefused),
    then stopped and removed if the bytes actually written pass the budget or a member's
    declared size (a lying header). Entries that escape `dest` (zip-slip) and links are skipped
    with a reason. Returns (files written, problems)."""
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    problems: list[str] = []
    written = 0
    name = Path(zip_path).name
    zf = check_archive(zip_path, budget=budget, max_ratio=max_ratio)
    try:
        with zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                pure = PurePosixPath(info.filename.replace("\\", "/"))
                if skip_hidden and (any(p.startswith(".") for p in pure.parts)
                                    or "__MACOSX" in pure.parts):
                    continue
                rel = PurePosixPath(pure.name) if flatten else pure
                target = (dest / rel).resolve()
                if pure.is_absolute() or ".." in pure.parts or not target.is_relative_to(dest) \
                        or target == dest:
                    problems.append(f"{info.filename}: skipped, the path escapes the upload folder")
                    continue
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    problems.append(f"{info.filename}: skipped, symbolic links are not extracted")
                    continue
                if flatten and target.exists():
                    problems.append(f"{info.filename}: skipped, a file named {pure.name} came "
                                    "earlier in the archive")
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                own = 0
                with zf.open(info) as src, open(target, "wb") as out:
                    while block := src.read(MiB):
                        own += len(block)
                        written += len(block)
                        if own > info.file_size or written > budget:
                            raise ArchiveRefused(
                                f"{name}: {info.filename} unpacks past its declared size or the "
                                f"{_size(budget)} extract budget ({BUDGET_SETTING}); refused")
                        out.write(block)
                files.append(target)
    except ArchiveRefused:
        for f in files:
            f.unlink(missing_ok=True)
        raise
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as e:
        problems.append(f"{name}: stopped reading the archive ({type(e).__name__}: {e})")
    return files, problems


def safe_yaml(text: str | bytes, *, label: str = "YAML", max_bytes: int = YAML_MAX_BYTES,
              max_aliases: int = YAML_MAX_ALIASES, max_nodes: int = YAML_MAX_NODES) -> Any:
    """``yaml.safe_load`` with limits: size, alias count, and the size of the data once aliases
    are expanded (a 677-byte alias bomb otherwise becomes millions of entries)."""
    import yaml

    if isinstance(text, bytes):
        if len(text) > max_bytes:
            raise ValueError(f"{label}: {_size(len(text))}, larger than the {_size(max_bytes)} "
                             "a YAML file may be")
        text = text.decode("utf-8", errors="replace")
    if len(text) > max_bytes:
        raise ValueError(f"{label}: larger than the {_size(max_bytes)} a YAML file may be")

    class Loader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
            if self.check_event(yaml.AliasEvent):
                Loader.aliases += 1
                if Loader.aliases > max_aliases:
                    raise ValueError(f"{label}: more than {max_aliases} YAML aliases (*name); "
                                     "write the values out instead")
            return super().compose_node(parent, index)

    try:
        data = yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ValueError(f"{label}: not valid YAML ({str(e).splitlines()[0]})") from None
    _count_nodes(data, max_nodes, label)
    return data


def _count_nodes(data: Any, limit: int, label: str) -> None:
    stack, n = [data], 0
    while stack:
        x = stack.pop()
        n += 1
        if n > limit:
            raise ValueError(f"{label}: more than {limit} values once aliases are expanded; that "
                             "is not a config file")
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)


def read_yaml_file(path: str | Path, *, label: str | None = None, **limits: Any) -> Any:
    path = Path(path)
    label = label or path.name
    size = path.stat().st_size
    cap = limits.get("max_bytes", YAML_MAX_BYTES)
    if size > cap:
        raise ValueError(f"{label}: {_size(size)}, larger than the {_size(cap)} a YAML file may be")
    return safe_yaml(path.read_bytes(), label=label, **limits)


# ----- numbers and text -------------------------------------------------------------------------
def finite(value: Any, label: str) -> float:
    """A finite float, or ValueError naming the field."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{label} must be a finite number, got {value!r}")
    return v


def check_lines(path: str | Path, *, label: str, max_bytes: int, max_line: int) -> None:
    """Refuse a text file larger than `max_bytes` or with a line longer than `max_line` bytes,
    reading in blocks (a 30 MB single line must not be held or parsed as one string)."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{label}: {path.name} is {_size(size)}, over the {_size(max_bytes)} "
                         "limit; split it or use a smaller file")
    with open(path, "rb") as f:
        line_no, run = 1, 0
        while block := f.read(MiB):
            start = 0
            while True:
                i = block.find(b"\n", start)
                if i < 0:
                    run += len(block) - start
                    break
                run += i - start
                if run > max_line:
                    break
                line_no, run, start = line_no + 1, 0, i + 1
            if run > max_line:
                raise ValueError(f"{label}: line {line_no} of {path.name} is longer than "
                                 f"{_size(max_line)}; one record per line, each under that size")
