"""Turn uploads, zips and folders into text documents, or a plain reason why a file was skipped.

Bad input never sinks an ingest: binary files, unreadable encodings, empty files, huge files,
broken PDFs/notebooks and zip entries that would escape the target folder (zip-slip) each come
back as a `Skipped` with a reason a person can act on; everything else becomes a `Document`.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from studio.config import format_bytes
from tabs.rag.config import IngestLimits

MARKDOWN = {".md", ".markdown", ".mdx"}
RST = {".rst"}
HTML = {".html", ".htm", ".xhtml"}
PDF = {".pdf"}
NOTEBOOK = {".ipynb"}
PYTHON = {".py", ".pyi"}
CODE = {".js", ".jsx", ".mjs", ".cjs", ".ts", ".tsx", ".go", ".rs", ".java", ".kt", ".kts",
        ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".cs", ".rb", ".php", ".swift",
        ".scala", ".sh", ".bash", ".zsh", ".fish", ".ps1", ".sql", ".r", ".lua", ".pl", ".m",
        ".css", ".scss", ".vue", ".svelte", ".dart", ".jl", ".zig", ".ex", ".exs", ".hs",
        ".ml", ".clj", ".groovy", ".gradle", ".cmake", ".proto"}
TEXT = {".txt", ".text", ".log", ".csv", ".tsv", ".json", ".jsonl", ".yaml", ".yml", ".toml",
        ".ini", ".cfg", ".conf", ".env", ".xml", ".tex", ".org", ".adoc", ".srt", ".vtt"}
TEXT_NAMES = {"makefile", "dockerfile", "readme", "license", "changelog", "notes", "todo"}
BINARY = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".ico", ".tif", ".tiff", ".mp3",
          ".wav", ".flac", ".ogg", ".m4a", ".mp4", ".mkv", ".mov", ".avi", ".webm", ".exe",
          ".dll", ".so", ".dylib", ".bin", ".o", ".a", ".class", ".jar", ".pyc", ".whl",
          ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".tar", ".zst", ".pt", ".pth",
          ".safetensors", ".gguf", ".onnx", ".npy", ".npz", ".pkl", ".parquet", ".sqlite",
          ".db", ".docx", ".xlsx", ".pptx", ".odt", ".ods", ".epub", ".woff", ".woff2", ".ttf",
          ".otf", ".psd"}
IGNORED_DIRS = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", "venv",
                ".mypy_cache", ".pytest_cache", ".ruff_cache", ".tox", ".idea", ".vscode",
                "dist", "build", ".ipynb_checkpoints"}
PAGE_MARK = "--- page {n} ---"


@dataclass
class RawFile:
    """One input file's bytes under the name it is indexed as (posix, relative)."""

    name: str
    data: bytes


@dataclass
class Document:
    """A file's text, ready to chunk. For PDF/HTML/notebooks it is the extracted text, which is
    kept with the index so line ranges and `read_source` refer to what was indexed."""

    name: str
    kind: str  # markdown | rst | html | pdf | ipynb | python | code | text
    text: str
    hash: str  # sha256 of the raw bytes: re-ingest skips files whose hash is unchanged
    size: int
    encoding: str = "utf-8"


@dataclass
class Skipped:
    name: str
    reason: str


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def kind_of(name: str) -> str | None:
    """The document kind from the file name; None when only the content can tell."""
    p = PurePosixPath(name)
    ext = p.suffix.lower()
    for kind, exts in (("markdown", MARKDOWN), ("rst", RST), ("html", HTML), ("pdf", PDF),
                       ("ipynb", NOTEBOOK), ("python", PYTHON), ("code", CODE),
                       ("text", TEXT), ("binary", BINARY)):
        if ext in exts:
            return kind
    if p.name.lower().split(".")[0] in TEXT_NAMES:
        return "text"
    return None


# ----- gathering inputs ------------------------------------------------------------------------
def safe_member_name(name: str) -> str | None:
    """The normalized relative path of a zip entry, or None when it would escape the folder
    it is unpacked into (absolute paths, '..' parts, drive letters: zip-slip)."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    norm = posixpath.normpath(name)
    if norm == "." or norm.startswith("../") or norm == ".." or "/../" in f"/{norm}/":
        return None
    return norm


def files_from_zip(path: Path, limits: IngestLimits, prefix: str = ""
                   ) -> Iterator[RawFile | Skipped]:
    """Entries of a zip, read in memory with size caps (a zip bomb cannot fill the disk)."""
    prefix = prefix or Path(path).name
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        yield Skipped(prefix, f"not a readable zip file ({exc})")
        return
    total = 0
    with zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            shown = f"{prefix}/{info.filename}"
            safe = safe_member_name(info.filename)
            if safe is None:
                yield Skipped(shown, "unsafe path in zip (would be written outside the target "
                                     "folder: zip-slip); not extracted")
                continue
            shown = f"{prefix}/{safe}"
            if stat.S_ISLNK(info.external_attr >> 16):
                yield Skipped(shown, "symbolic link inside the zip; not followed")
                continue
            if any(part in IGNORED_DIRS for part in PurePosixPath(safe).parts[:-1]):
                continue
            if info.file_size > limits.max_file_bytes:
                yield Skipped(shown, _too_large(info.file_size, limits))
                continue
            if total + info.file_size > limits.max_zip_bytes:
                yield Skipped(shown, f"the zip unpacks to more than "
                                     f"{format_bytes(limits.max_zip_bytes)}; rest not read")
                continue
            try:
                with zf.open(info) as f:
                    data = f.read(limits.max_file_bytes + 1)  # never trust the declared size
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
                yield Skipped(shown, f"could not be read from the zip ({exc})")
                continue
            if len(data) > limits.max_file_bytes:
                yield Skipped(shown, _too_large(len(data), limits))
                continue
            total += len(data)
            yield RawFile(shown, data)


def files_from_paths(paths: list[Path], limits: IngestLimits) -> Iterator[RawFile | Skipped]:
    """Uploaded files; zips are opened and their entries indexed as ``name.zip/member``."""
    for p in paths:
        p = Path(p)
        if p.suffix.lower() == ".zip":
            yield from files_from_zip(p, limits, prefix=p.name)
            continue
        yield from _read_file(p, p.name, limits)


def resolve_folder(folder: str | Path, home: Path) -> Path:
    """A folder to index: one of the person's own inside the studio home (the app serves
    nothing else, and never the studio's own data: `studio.safety.user_folder`)."""
    from studio.safety import user_folder

    return user_folder(home, folder, label="Folder")


def files_from_folder(folder: Path, limits: IngestLimits) -> Iterator[RawFile | Skipped]:
    """Every file under `folder` (named ``folder/relative/path``), skipping tool folders such as
    .git and node_modules, and symlinks that lead outside the folder."""
    root = Path(folder).resolve()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in IGNORED_DIRS for part in rel.parts[:-1]):
            continue
        name = f"{root.name}/{rel.as_posix()}"
        if path.is_dir():
            if path.name in IGNORED_DIRS:
                yield Skipped(name + "/", f"ignored folder ({path.name})")
            continue
        real = path.resolve()
        if root not in real.parents:
            yield Skipped(name, "symbolic link to a file outside the folder; not followed")
            continue
        if not real.is_file():
            yield Skipped(name, "not a regular file")
            continue
        yield from _read_file(real, name, limits)


def _too_large(size: int, limits: IngestLimits) -> str:
    return (f"too large ({format_bytes(size)}; the limit is "
            f"{format_bytes(limits.max_file_bytes)}): split it or raise the limit")


def _read_file(path: Path, name: str, limits: IngestLimits) -> Iterator[RawFile | Skipped]:
    try:
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            yield Skipped(name, _too_large(size, limits))
            return
        yield RawFile(name, path.read_bytes())
    except OSError as exc:
        yield Skipped(name, f"could not be read ({exc.strerror or exc})")


# ----- decoding ----------------------------------------------------------------------------
def decode_text(data: bytes) -> tuple[str, str] | None:
    """(text, encoding), or None when the bytes are no text encoding we can trust."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace"), "utf-8-sig"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            return None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    import charset_normalizer

    matches = charset_normalizer.from_bytes(data)
    best = matches.best()
    if best is None or best.chaos > 0.2:
        return None
    # Equally plausible guesses: prefer Windows-1252, the usual legacy encoding of notes.
    ties = [m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
    pick = next((m for m in ties if m.encoding == "cp1252"), best)
    return str(pick), pick.encoding


def looks_binary(data: bytes) -> bool:
    head = data[:8192]
    return b"\0" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff"))


def load_document(raw: RawFile) -> Document | Skipped:
    """Decode one file into a Document by its kind, or say why it cannot be indexed."""
    data, name = raw.data, raw.name
    kind = kind_of(name)
    if not data.strip():
        return Skipped(name, "empty file")
    if kind == "binary":
        return Skipped(name, f"binary file ({PurePosixPath(name).suffix.lower()}): not text")
    digest = sha256(data)
    if kind == "pdf":
        return _pdf_document(name, data, digest)
    if looks_binary(data):
        return Skipped(name, "binary file (contains NUL bytes): not text")
    decoded = decode_text(data)
    if decoded is None:
        return Skipped(name, "unreadable text encoding (not UTF-8 and no reliable guess); "
                             "save it as UTF-8 to index it")
    text, encoding = decoded
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if kind == "ipynb":
        try:
            text = notebook_text(text)
        except ValueError as exc:
            return Skipped(name, str(exc))
    elif kind == "html":
        text = html_text(text)
    if not text.strip():
        return Skipped(name, "no text left after extraction (empty file)")
    return Document(name=name, kind=kind or "text", text=text, hash=digest, size=len(data),
                    encoding=encoding)


def _pdf_document(name: str, data: bytes, digest: str) -> Document | Skipped:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError

        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            return Skipped(name, "encrypted PDF: remove the password to index it")
        pages = [page.extract_text() or "" for page in reader.pages]
    except PdfReadError as exc:
        return Skipped(name, f"could not read the PDF ({exc})")
    except Exception as exc:  # pypdf raises many types on broken files
        return Skipped(name, f"could not read the PDF ({type(exc).__name__}: {exc})")
    if not any(p.strip() for p in pages):
        return Skipped(name, "the PDF has no text layer (a scan?): OCR it first")
    parts = []
    for n, page in enumerate(pages, 1):
        parts.append(PAGE_MARK.format(n=n))
        parts.append(page.strip())
    return Document(name=name, kind="pdf", text="\n".join(parts) + "\n", hash=digest,
                    size=len(data))


def notebook_text(text: str) -> str:
    """A notebook as Markdown: markdown cells as they are, code cells as fenced blocks."""
    try:
        nb = json.loads(text)
        cells = nb["cells"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not a valid Jupyter notebook ({exc})") from None
    lang = (nb.get("metadata", {}).get("language_info", {}) or {}).get("name", "python")
    out = []
    for cell in cells:
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else str(src)
        if not src.strip():
            continue
        if cell.get("cell_type") == "code":
            out.append(f"```{lang}\n{src.rstrip()}\n```")
        else:
            out.append(src.rstrip())
    return "\n\n".join(out) + "\n"


def html_text(text: str) -> str:
    """HTML as Markdown (headings kept), so it is chunked by heading like notes are."""
    import html2text

    conv = html2text.HTML2Text()
    conv.body_width = 0  # no hard wrapping: lines stay sentences
    conv.ignore_images = True
    conv.ignore_links = False
    return conv.handle(text)
