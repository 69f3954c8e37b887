"""Structure-aware chunking: Markdown by heading, Python by top-level def/class (via ast), other
code by top-level declarations where a simple pattern finds them, everything else by line
windows with overlap. Every chunk keeps its heading or symbol and its 1-based line range, so an
answer can cite ``notes/setup.md:12-30`` and the side panel can show exactly those lines.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass

from tabs.rag.loaders import PAGE_MARK, Document


@dataclass
class Chunk:
    text: str
    heading: str  # Markdown heading path, code symbol, or "page N"; "" when none
    start_line: int  # 1-based, inclusive
    end_line: int


# ----- line windows ----------------------------------------------------------------------------
def window_lines(lines: list[str], first_line: int, heading: str, max_chars: int,
                 overlap: int) -> list[Chunk]:
    """Consecutive lines packed up to `max_chars`, each window repeating the last `overlap`
    lines of the previous one. A single over-long line (minified code) is cut by characters."""
    chunks: list[Chunk] = []
    i, n = 0, len(lines)
    while i < n:
        size, j = 0, i
        while j < n and (j == i or size + len(lines[j]) + 1 <= max_chars):
            size += len(lines[j]) + 1
            j += 1
        if j == i + 1 and len(lines[i]) > max_chars:  # one huge line
            line = lines[i]
            for k in range(0, len(line), max_chars):
                chunks.append(Chunk(line[k:k + max_chars], heading, first_line + i,
                                    first_line + i))
            i += 1
            continue
        text = "\n".join(lines[i:j])
        if text.strip():
            chunks.append(Chunk(text, heading, first_line + i, first_line + j - 1))
        if j >= n:
            break
        i = max(i + 1, j - overlap)
    return chunks


def _section(lines: list[str], start: int, end: int, heading: str, max_chars: int,
             overlap: int) -> list[Chunk]:
    """Lines [start, end) (0-based) as one chunk, or windows when too long."""
    body = lines[start:end]
    while body and not body[-1].strip():
        body, end = body[:-1], end - 1
    text = "\n".join(body)
    if not text.strip():
        return []
    if len(text) <= max_chars:
        return [Chunk(text, heading, start + 1, end)]
    return window_lines(body, start + 1, heading, max_chars, overlap)


def chunk_text(text: str, max_chars: int = 1000, overlap: int = 4) -> list[Chunk]:
    return window_lines(text.split("\n"), 1, "", max_chars, overlap)


# ----- Markdown and reStructuredText -------------------------------------------------------
def markdown_headings(text: str) -> list[tuple[int, int, str]]:
    """(0-based line, level, title) of each heading; markdown-it skips '#' inside code."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(text)
    out = []
    for k, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.map:
            title = tokens[k + 1].content.strip() if k + 1 < len(tokens) else ""
            out.append((tok.map[0], int(tok.tag[1]), title))
    return out


def _by_headings(lines: list[str], heads: list[tuple[int, int, str]], max_chars: int,
                 overlap: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    trail: list[tuple[int, str]] = []  # (level, title) of the enclosing headings
    starts = [h[0] for h in heads] + [len(lines)]
    if not heads or heads[0][0] > 0:
        chunks += _section(lines, 0, starts[0] if heads else len(lines), "", max_chars,
                           overlap)
    for k, (line, level, title) in enumerate(heads):
        trail = [t for t in trail if t[0] < level] + [(level, title)]
        path = " > ".join(t[1] for t in trail if t[1])
        chunks += _section(lines, line, starts[k + 1], path, max_chars, overlap)
    return chunks


def chunk_markdown(text: str, max_chars: int = 1000, overlap: int = 4) -> list[Chunk]:
    """One chunk per section (heading to next heading), headed by its heading path."""
    return _by_headings(text.split("\n"), markdown_headings(text), max_chars, overlap)


_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+_.:])\1{2,}\s*$")


def rst_headings(lines: list[str]) -> list[tuple[int, int, str]]:
    """Section titles: a text line underlined by a run of one punctuation character at least as
    long; levels in order of first appearance, as docutils assigns them."""
    styles: list[str] = []
    out = []
    for i in range(len(lines) - 1):
        title, under = lines[i].rstrip(), lines[i + 1].rstrip()
        if not title.strip() or _RST_UNDERLINE.match(title) or not _RST_UNDERLINE.match(under):
            continue
        if len(under) < len(title.strip()):
            continue
        over = i > 0 and lines[i - 1].rstrip() == under
        style = ("o" if over else "u") + under[0]
        if style not in styles:
            styles.append(style)
        out.append((i - 1 if over else i, styles.index(style) + 1, title.strip()))
    return out


def chunk_rst(text: str, max_chars: int = 1000, overlap: int = 4) -> list[Chunk]:
    lines = text.split("\n")
    return _by_headings(lines, rst_headings(lines), max_chars, overlap)


# ----- code ------------------------------------------------------------------------------------
def _node_start(node: ast.AST) -> int:
    decos = getattr(node, "decorator_list", None) or []
    return min([node.lineno] + [d.lineno for d in decos])  # type: ignore[attr-defined]


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _python_units(body: list[ast.stmt], prefix: str) -> list[tuple[int, int, str, ast.AST | None]]:
    """(start, end, symbol, node) per top-level def/class; other statements grouped."""
    units: list[tuple[int, int, str, ast.AST | None]] = []
    loose: list[ast.stmt] = []

    def flush():
        if loose:
            units.append((_node_start(loose[0]), loose[-1].end_lineno or loose[-1].lineno,
                          prefix.rstrip(".") or "(module)", None))
            loose.clear()

    for node in body:
        if isinstance(node, _DEFS):
            flush()
            units.append((_node_start(node), node.end_lineno or node.lineno,
                          f"{prefix}{node.name}", node))
        else:
            loose.append(node)
    flush()
    return units


def chunk_python(text: str, max_chars: int = 1000, overlap: int = 4) -> list[Chunk]:
    """One chunk per top-level function or class (decorators included); a class too long for
    one chunk becomes one chunk per method (``Class.method``). Falls back to line windows when
    the file does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return chunk_text(text, max_chars, overlap)
    lines = text.split("\n")
    chunks: list[Chunk] = []
    first = min((_node_start(n) for n in tree.body), default=len(lines) + 1)
    if first > 1:  # module docstring/comments before the first statement
        chunks += _section(lines, 0, first - 1, "(module)", max_chars, overlap)
    for start, end, symbol, node in _python_units(tree.body, ""):
        if node is not None:  # keep the comment block just above a def with it
            while start > 1 and lines[start - 2].lstrip().startswith("#"):
                start -= 1
        size = sum(len(line) + 1 for line in lines[start - 1:end])
        if isinstance(node, ast.ClassDef) and size > max_chars:
            inner = _python_units(node.body, f"{node.name}.")
            first_def = min([u[0] for u in inner if u[3] is not None], default=end + 1)
            # the class line, docstring and attributes before the first method
            chunks += _section(lines, start - 1, max(first_def - 1, start), node.name,
                               max_chars, overlap)
            for s, e, sym, sub in inner:
                if sub is not None or s > first_def:
                    chunks += _section(lines, s - 1, e, sym, max_chars, overlap)
        else:
            chunks += _section(lines, start - 1, end, symbol, max_chars, overlap)
    return chunks


# Top-level declarations at column 0, for brace languages formatted the usual way.
_DECL = {
    "go": r"^func\s+(?:\([^)]*\)\s*)?(\w+)|^type\s+(\w+)",
    "rust": r"^(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?(?:unsafe\s+)?(?:fn|struct|enum|trait|"
            r"impl(?:<[^>]*>)?|mod)\s+([\w:]+)",
    "js": r"^(?:export\s+)?(?:default\s+)?(?:async\s+)?(?:function\*?|class|interface|type|"
          r"enum)\s+(\w+)|^(?:export\s+)?(?:const|let|var)\s+(\w+)\s*=\s*(?:async\s*)?\(",
    "c": r"^(?!\s)(?!#)(?!typedef\b)[\w\s\*:<>,~]+?\b(\w+)\s*\([^;]*$|^(?:class|struct)\s+(\w+)",
    "java": r"^(?:public\s+|final\s+|abstract\s+)*(?:class|interface|enum|record)\s+(\w+)",
    "shell": r"^(?:function\s+)?(\w+)\s*\(\)\s*\{?",
    "ruby": r"^(?:class|module|def)\s+([\w:.]+)",
}
_LANG = {".go": "go", ".rs": "rust", ".js": "js", ".jsx": "js", ".mjs": "js", ".cjs": "js",
         ".ts": "js", ".tsx": "js", ".c": "c", ".h": "c", ".cc": "c", ".cpp": "c", ".cxx": "c",
         ".hpp": "c", ".hh": "c", ".java": "java", ".kt": "java", ".cs": "java",
         ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".rb": "ruby"}


def code_declarations(lines: list[str], lang: str) -> list[tuple[int, str]]:
    """(0-based line, symbol) of each top-level declaration the language's pattern finds."""
    pat = re.compile(_DECL[lang])
    out = []
    for i, line in enumerate(lines):
        m = pat.match(line)
        if m:
            name = next((g for g in m.groups() if g), "")
            if name and name not in ("if", "for", "while", "switch", "return"):
                out.append((i, name))
    return out


def _leading_comment(lines: list[str], i: int) -> int:
    """Move a declaration's start up over the comment/attribute lines just above it."""
    while i > 0 and lines[i - 1].strip().startswith(("//", "/*", "*", "#[", "@", "#")) and \
            not lines[i - 1].startswith("#!"):
        i -= 1
    return i


def chunk_code(text: str, ext: str, max_chars: int = 1000, overlap: int = 4) -> list[Chunk]:
    """Brace languages split at top-level declarations; others (or none found) by windows."""
    lang = _LANG.get(ext.lower())
    lines = text.split("\n")
    decls = code_declarations(lines, lang) if lang else []
    if not decls:
        return window_lines(lines, 1, "", max_chars, overlap)
    starts = [_leading_comment(lines, i) for i, _ in decls]
    chunks = _section(lines, 0, starts[0], "(top)", max_chars, overlap) if starts[0] > 0 else []
    for k, (_, name) in enumerate(decls):
        end = starts[k + 1] if k + 1 < len(decls) else len(lines)
        if end > starts[k]:
            chunks += _section(lines, starts[k], end, name, max_chars, overlap)
    return chunks


# ----- PDF pages ---------------------------------------------------------------------------
_PAGE = re.compile("^" + re.escape(PAGE_MARK).replace(r"\{n\}", r"(\d+)") + "$")


def chunk_pages(text: str, max_chars: int = 1000, overlap: int = 4) -> list[Chunk]:
    """PDF text as the loader lays it out: a page mark line, then that page's lines."""
    lines = text.split("\n")
    marks = [(i, m.group(1)) for i, line in enumerate(lines) if (m := _PAGE.match(line))]
    chunks: list[Chunk] = []
    for k, (i, n) in enumerate(marks):
        end = marks[k + 1][0] if k + 1 < len(marks) else len(lines)
        chunks += _section(lines, i + 1, end, f"page {n}", max_chars, overlap)
    return chunks


def chunk_document(doc: Document, max_chars: int = 1000, overlap: int = 4) -> list[Chunk]:
    """Pick the chunker for the document's kind."""
    from pathlib import PurePosixPath

    by_kind: dict[str, Callable[[str, int, int], list[Chunk]]] = {
        "markdown": chunk_markdown, "html": chunk_markdown, "ipynb": chunk_markdown,
        "rst": chunk_rst, "python": chunk_python, "pdf": chunk_pages,
    }
    if doc.kind == "code":
        return chunk_code(doc.text, PurePosixPath(doc.name).suffix, max_chars, overlap)
    fn = by_kind.get(doc.kind, chunk_text)
    return fn(doc.text, max_chars, overlap)
