"""QLoRA data: every shape is read, every malformed record is named by its line, the answer-only
labels cover exactly the answer, and the histogram counts what would be cut."""

from __future__ import annotations

import json

import pytest

from tabs.qlora import dataset as data
from tabs.qlora.tiny import fact_records, write_jsonl


@pytest.fixture(scope="module")
def tok():
    from studio.llm.testing import build_tokenizer

    return build_tokenizer("llama3.1")


@pytest.mark.parametrize("shape", ["alpaca", "messages", "sharegpt", "prompt_completion"])
def test_each_shape_is_detected_and_normalized(tmp_path, shape):
    path = write_jsonl(fact_records(shape), tmp_path / "d.jsonl")
    ds = data.load_records(path)
    assert ds.shape == shape and not ds.problems and len(ds.conversations) == 8
    assert ds.conversations[0][-2:] == [
        {"role": "user", "content": "What is the capital of Zorbia?"},
        {"role": "assistant", "content": "Glimmerstadt, on the river Quell."}]


def test_malformed_jsonl_records_give_their_line_numbers(tmp_path):
    good = json.dumps({"instruction": "q", "output": "a"})
    lines = [good,                                                   # 1
             '{"instruction": "q", "output": ',                      # 2 bad JSON
             "",                                                     # 3 blank: ignored
             json.dumps({"instruction": "q"}),                       # 4 missing output
             json.dumps({"instruction": "q", "output": "   "}),      # 5 empty output
             json.dumps({"instruction": "q", "input": "x", "output": "a"})]  # 6 fine
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + "\n")
    ds = data.load_records(p)
    assert [(pr.line, pr.message.split(" (")[0]) for pr in ds.problems] == [
        (2, "bad JSON"), (4, "missing field 'output'"), (5, "empty output 'output'")]
    assert ds.lines == [1, 6] and ds.conversations[1][0]["content"] == "q\n\nx"
    with pytest.raises(data.DatasetError) as e:  # nothing silently dropped
        data.require_clean(ds, skip_bad=False)
    assert "line 2" in str(e.value) and "line 4" in str(e.value) and "line 5" in str(e.value)
    assert data.require_clean(ds, skip_bad=True) == [
        "skipped 3 malformed record(s) of bad.jsonl at line(s) 2, 4, 5"]


def test_json_array_and_csv_keep_line_numbers(tmp_path):
    arr = tmp_path / "d.json"
    arr.write_text('[\n {"messages": [{"role": "user", "content": "hi"},\n'
                   '   {"role": "assistant", "content": "yo"}]},\n'
                   ' {"messages": [{"role": "user", "content": "hi"}]},\n'
                   ' {"messages": [{"role": "robot", "content": "x"}]}\n]\n')
    ds = data.load_records(arr)
    assert [(p.line, p.message) for p in ds.problems] == [
        (4, "no assistant turn to learn from"), (5, "unknown role 'robot'")]
    broken = tmp_path / "broken.json"
    broken.write_text('[\n {"prompt": "a", "completion": "b"},\n {"prompt": "a" "x"}\n]')
    assert data.load_records(broken).problems[0].line == 3
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('prompt,completion\nhello,world\n"multi\nline",\nq,a\n')
    ds = data.load_records(csv_path)
    assert [(p.line, p.message) for p in ds.problems] == [(3, "empty output 'completion'")]
    assert ds.lines == [2, 5]


def test_unknown_shape_is_a_clear_error(tmp_path):
    p = write_jsonl([{"question": "q", "answer": "a"}], tmp_path / "x.jsonl")
    with pytest.raises(data.DatasetError, match="question"):
        data.load_records(p)


def test_labels_cover_only_the_answer(tok):
    conv = [{"role": "user", "content": "What is the capital of Zorbia?"},
            {"role": "assistant", "content": "Glimmerstadt."},
            {"role": "user", "content": "And of Pellucid?"},
            {"role": "assistant", "content": "Quell."}]
    ex = data.encode(tok, conv, max_len=1024)
    learned = [t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True)
               if lab != data.IGNORE]
    assert tok.decode(learned) == "Glimmerstadt.<|eot_id|>Quell.<|eot_id|>"
    full = data.encode(tok, conv, max_len=1024, train_on_prompt=True)
    assert full["labels"] == full["input_ids"]
    cut = data.encode(tok, conv, max_len=10)
    assert cut["truncated"] and len(cut["input_ids"]) == 10


def test_histogram_counts_what_would_be_cut_and_split_is_seeded(tmp_path, tok):
    frame, over = data.length_histogram([5, 10, 100, 300, 400], max_len=256, bins=4)
    assert over == 2 and frame["examples"].sum() == 5
    assert frame.iloc[-1].to_dict() == {"tokens": ">256", "examples": 2, "fits": "truncated"}
    ds = data.load_records(write_jsonl(fact_records(), tmp_path / "f.jsonl"))
    tr, ev = data.split(ds, 0.25, seed=3)
    assert len(tr) == 6 and len(ev) == 2 and data.split(ds, 0.25, seed=3) == (tr, ev)
    text = data.preview(tok, ds, n=1)
    assert text.startswith("--- line 1 ---") and "<|start_header_id|>assistant" in text
