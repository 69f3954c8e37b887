"""RAG ingest without models: chunking by structure, and bad input skipped with reasons."""

from __future__ import annotations

import io
import os
import zipfile

import pytest

from tabs.rag.chunking import (
    chunk_code,
    chunk_markdown,
    chunk_python,
    chunk_rst,
    window_lines,
)
from tabs.rag.config import IngestLimits
from tabs.rag.ingest import gather, prepare
from tabs.rag.loaders import RawFile, load_document, resolve_folder, safe_member_name
from tests.unit.rag_corpus import minimal_pdf, notebook


# ----- chunking --------------------------------------------------------------------------------
def test_markdown_is_chunked_by_heading_with_heading_path_and_lines():
    text = ("Intro line.\n\n# Setup\n\nInstall it.\n\n```bash\n# not a heading\npip install x\n"
            "```\n\n## Linux\n\nUse apt.\n\n# Usage\n\nRun it.\n")
    chunks = chunk_markdown(text)
    assert [c.heading for c in chunks] == ["", "Setup", "Setup > Linux", "Usage"]
    setup = chunks[1]
    assert "# not a heading" in setup.text, "a '#' inside a code fence is no heading"
    assert (setup.start_line, setup.end_line) == (3, 10)
    lines = text.split("\n")
    for c in chunks:  # each range points at exactly the chunk's text
        assert "\n".join(lines[c.start_line - 1:c.end_line]) == c.text


def test_python_is_chunked_by_top_level_def_and_class_via_ast():
    src = ('"""Module doc."""\nimport os\n\n\n# helper for paths\n@decorator\ndef load(path):\n'
           '    return os.path.exists(path)\n\n\nclass Store:\n    """A store."""\n\n'
           '    def get(self, key):\n        return key\n')
    chunks = chunk_python(src)
    names = [c.heading for c in chunks]
    assert names == ["(module)", "load", "Store"]
    load = chunks[1]
    assert load.text.startswith("# helper for paths\n@decorator"), "comment and decorator kept"
    assert (load.start_line, load.end_line) == (5, 8)


def test_a_long_class_is_split_into_methods():
    methods = "".join(f"    def m{i}(self):\n        return '{'x' * 200}'\n\n" for i in range(8))
    src = f"class Big:\n    \"\"\"Doc.\"\"\"\n\n{methods}"
    chunks = chunk_python(src, max_chars=600)
    assert chunks[0].heading == "Big"
    assert [c.heading for c in chunks[1:]] == [f"Big.m{i}" for i in range(8)]


def test_go_code_splits_at_top_level_funcs_and_broken_python_falls_back_to_windows():
    go = ("package main\n\nimport \"fmt\"\n\n// Add adds.\nfunc Add(a, b int) int {\n\treturn a + b"
          "\n}\n\nfunc (s *Server) Start() error {\n\treturn nil\n}\n")
    chunks = chunk_code(go, ".go")
    assert [c.heading for c in chunks] == ["(top)", "Add", "Start"]
    assert chunks[1].text.startswith("// Add adds.")
    broken = "def oops(:\n" + "x = 1\n" * 50
    assert chunk_python(broken, max_chars=100)[0].heading == ""


def test_line_windows_overlap_and_cut_one_huge_line():
    lines = [f"line {i} " + "y" * 30 for i in range(40)]
    chunks = window_lines(lines, 1, "", max_chars=200, overlap=2)
    assert len(chunks) > 5
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start_line == a.end_line - 1, "two lines of overlap"
    assert chunks[-1].end_line == 40
    huge = window_lines(["z" * 1000], 7, "", max_chars=300, overlap=2)
    assert len(huge) == 4 and all(c.start_line == 7 for c in huge)


def test_rst_sections_use_their_titles():
    text = "Recipes\n=======\n\nIntro.\n\nPancakes\n--------\n\nFlour.\n\nBread\n-----\n\nYeast.\n"
    assert [c.heading for c in chunk_rst(text)] == ["Recipes", "Recipes > Pancakes",
                                                    "Recipes > Bread"]


def test_pdf_html_and_notebook_are_extracted_to_text():
    pdf = load_document(RawFile("docs/boiler.pdf", minimal_pdf(["Boiler service is on October 9.",
                                                                "Second page."])))
    assert pdf.kind == "pdf" and "October 9" in pdf.text
    html = load_document(RawFile("a.html", b"<h1>Deploy</h1><p>Thursdays at <b>14:00</b>.</p>"))
    assert html.kind == "html" and "# Deploy" in html.text and "14:00" in html.text
    nb = load_document(RawFile("a.ipynb", notebook().encode()))
    assert "# Sales analysis" in nb.text and "```python\nq3_revenue" in nb.text


# ----- bad input -------------------------------------------------------------------------------
def _zip_with(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_every_bad_input_is_skipped_with_its_reason_and_nothing_else_is_lost(tmp_path):
    limits = IngestLimits(max_file_bytes=4096)
    good = {"notes.md": b"# Notes\n\nThe cat is called Miso.\n", "app.py": b"def f():\n    pass\n",
            "latin.txt": "Café crème, très bien. Ça coûte quatre euros.\n".encode("latin-1") * 3}
    bad = {
        "photo.png": (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(100), "binary"),
        "blob.dat": (b"abc\0def" * 10, "binary"),
        "garbage.txt": (bytes(range(128, 256)) * 4, "unreadable text encoding"),
        "empty.md": (b"", "empty file"),
        "blank.txt": (b"\n\n   \n", "empty file"),
        "huge.txt": (b"words " * 2000, "too large"),
        "broken.pdf": (b"%PDF-1.4 this is not really a pdf", "could not read the PDF"),
        "broken.ipynb": (b"{not json", "not a valid Jupyter notebook"),
    }
    for name, data in good.items():
        (tmp_path / name).write_bytes(data)
    for name, (data, _) in bad.items():
        (tmp_path / name).write_bytes(data)
    archive = tmp_path / "bundle.zip"
    archive.write_bytes(_zip_with({
        "inside/ok.md": b"# Inside\n\nZipped fact: the boat is blue.\n",
        "../../escape.md": b"# evil\n", "/etc/passwd.md": b"# evil\n",
        "inside/../../../up.txt": b"evil\n"}))
    (tmp_path / "corrupt.zip").write_bytes(b"PK\x03\x04 not a zip")
    paths = [tmp_path / n for n in [*good, *bad, "bundle.zip", "corrupt.zip"]]
    prep = prepare(gather(paths, None, limits), known={}, limits=limits)
    indexed = {d.name for d, _ in prep.docs}
    assert indexed == {*good, "bundle.zip/inside/ok.md"}, "every good file is indexed"
    reasons = {s.name: s.reason for s in prep.skipped}
    for name, (_, why) in bad.items():
        assert why in reasons[name], f"{name}: {reasons.get(name)}"
    slips = [n for n, r in reasons.items() if "zip-slip" in r]
    assert len(slips) == 3 and all(n.startswith("bundle.zip/") for n in slips)
    assert "not a readable zip" in reasons["corrupt.zip"]
    assert not (tmp_path.parent / "escape.md").exists() and not (tmp_path / "up.txt").exists()
    latin = next(d for d, _ in prep.docs if d.name == "latin.txt")
    assert "Café crème" in latin.text


def test_zip_member_names_that_escape_are_refused():
    for name in ["../x", "a/../../x", "/abs", "C:/win", "..\\x"]:
        assert safe_member_name(name) is None, name
    assert safe_member_name("a/./b/../c.md") == "a/c.md"


def test_folder_must_be_inside_home_and_symlinks_out_are_skipped(tmp_path):
    home = tmp_path / "home"
    notes = home / "notes"
    (notes / ".git").mkdir(parents=True)
    (notes / ".git" / "HEAD").write_text("ref: x")
    (notes / "a.md").write_text("# A\n\nalpha\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the home")
    os.symlink(secret, notes / "link.txt")
    with pytest.raises(ValueError, match="inside the studio home"):
        resolve_folder(tmp_path, home)
    with pytest.raises(ValueError, match="inside the studio home"):
        resolve_folder("notes/../..", home)
    root = resolve_folder("notes", home)
    prep = prepare(gather([], root), known={}, folder_prefix="notes/")
    assert [d.name for d, _ in prep.docs] == ["notes/a.md"]
    reasons = {s.name: s.reason for s in prep.skipped}
    assert "outside the folder" in reasons["notes/link.txt"]
    assert "ignored folder" in reasons["notes/.git/"]


def test_unchanged_files_are_not_prepared_again_and_removed_files_are_noticed(tmp_path):
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "a.md").write_text("# A\n\nalpha\n")
    (tmp_path / "n" / "b.md").write_text("# B\n\nbeta\n")
    first = prepare(gather([], tmp_path / "n"), known={}, folder_prefix="n/")
    known = {d.name: d.hash for d, _ in first.docs}
    (tmp_path / "n" / "b.md").write_text("# B\n\nbeta, changed\n")
    (tmp_path / "n" / "a.md").unlink()
    (tmp_path / "n" / "c.md").write_text("# C\n\ngamma\n")
    again = prepare(gather([], tmp_path / "n"), known=known | {"n/old.md": "x"},
                    folder_prefix="n/")
    assert sorted(d.name for d, _ in again.docs) == ["n/b.md", "n/c.md"]
    assert again.removed == ["n/a.md", "n/old.md"]
    third = prepare(gather([], tmp_path / "n"), known={d.name: d.hash for d, _ in again.docs},
                    folder_prefix="n/")
    assert third.unchanged == ["n/b.md", "n/c.md"] and not third.docs


# ----- evaluation metrics (no models) ----------------------------------------------------------
def test_eval_metrics_rank_rouge_and_rubric_with_stand_in_search_and_answers():
    from tabs.rag.answer import Answer
    from tabs.rag.evaluation import evaluate, parse_generated, parse_qa_jsonl
    from tabs.rag.index import ChunkRecord
    from tabs.rag.retrieval import Hit, SearchResult

    def hit(path):
        return Hit(ChunkRecord(id=path, path=path, heading="", start_line=1, end_line=5,
                               text=""), score=1, similarity=0.9, relevant=True)

    ranked = {"q1": ["notes/a.md", "b.md"], "q2": ["c.md", "d.md", "notes/b.md"],
              "q3": ["x.md"]}

    def search_with(cfg):
        order = ranked if cfg.hybrid else {**ranked, "q1": ["b.md", "notes/a.md"]}
        return lambda q: SearchResult(q, [hit(p) for p in order[q]][:cfg.top_k])

    def answer(q):
        if q == "q1":
            return Answer("The cat is called Miso [1]", [hit("notes/a.md")], citations=[1])
        return Answer("I don't know from your notes.", [], idk=True)

    items = parse_qa_jsonl('{"question": "q1", "expected_answer": "the cat is called Miso", '
                           '"expected_source": "a.md"}\n\n'
                           '{"question": "q2", "expected_source": "notes/b.md:3-4"}\n'
                           '{"question": "q3"}\n')
    run = evaluate(items, search_with, k=3, rerank_available=False, answer_fn=answer,
                   answer_config="hybrid")
    rows = {r.config: r for r in run.rows}
    assert rows["hybrid"].hit_at_k == 1.0 and rows["hybrid"].n == 2
    assert abs(rows["hybrid"].mrr - (1 + 1 / 3) / 2) < 1e-9
    assert abs(rows["vector"].mrr - (1 / 2 + 1 / 3) / 2) < 1e-9
    assert rows["hybrid"].rouge_l > 0.9 and rows["vector"].rouge_l is None
    # q1 cites the right file with the answer's words: 1; q2 says "don't know" but has a
    # source: 0; q3 has no source and says "don't know": 1.
    assert abs(rows["hybrid"].rubric - 2 / 3) < 1e-9
    assert [i["rank[hybrid]"] for i in run.items[:2]] == [1, 3]
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        parse_qa_jsonl('{"question": "ok"}\n{oops\n')
    with pytest.raises(ValueError, match="line 1 has no question"):
        parse_qa_jsonl('{"answer": "no question"}\n')
    assert parse_generated("Question: Where is the boat?\nAnswer: Pier 7.") == \
        ("Where is the boat?", "Pier 7.")
