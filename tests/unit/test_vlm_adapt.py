"""Adapting a VLM on CPU with a tiny random Qwen2-VL: the data zip is read with a reason for
every bad line, a few LoRA steps change the answers, a cancelled run resumes and its loss
continues, and the trained adapter chats through the VLM engine's fast path."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from studio.llm import GenerationSettings
from studio.reporting import Reporter, read_events
from tabs.vlm import dataset as data
from tabs.vlm.tiny import make_pairs_zip, make_tiny_vlm


def _png(colour=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_each_bad_line_gets_its_reason(tmp_path):
    lines = [
        {"messages": [{"role": "user", "content": "<image>What is it?"},
                      {"role": "assistant", "content": "A red square."}], "images": ["a.png"]},
        "{not json",
        {"messages": [{"role": "user", "content": "<image>?"},
                      {"role": "assistant", "content": "x"}], "images": ["missing.png"]},
        {"messages": [{"role": "user", "content": "<image><image>Compare"},
                      {"role": "assistant", "content": "same"}], "images": ["a.png"]},
        {"messages": [{"role": "user", "content": "<image>?"},
                      {"role": "assistant", "content": "x"}], "images": ["bad.png"]},
        {"messages": [{"role": "user", "content": "<image>?"}], "images": ["a.png"]},
        {"messages": [{"role": "user", "content": "<image>?"},
                      {"role": "assistant", "content": "x"}], "images": ["../../etc/passwd"]},
        {"conversations": [{"from": "human", "value": "Describe"},
                           {"from": "gpt", "value": "A red square."}], "images": ["a.png"]},
    ]
    z = tmp_path / "pairs.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a.png", _png())
        zf.writestr("bad.png", b"\x89PNG\r\n\x1a\n broken")
        zf.writestr("data.jsonl", "\n".join(x if isinstance(x, str) else json.dumps(x)
                                            for x in lines) + "\n")
    ps = data.load_pairs(z, tmp_path / "work")
    assert [p.line for p in ps.pairs] == [1, 8]  # line 8: one picture, marker added
    assert ps.pairs[1].messages[0]["content"].startswith("<image>")
    reasons = {p.line: p.message for p in ps.problems}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7]
    assert "missing.png" in reasons[3] and "not in the zip" in reasons[3]
    assert "2 <image> marker(s) but 1 picture(s)" in reasons[4]
    assert "bad.png: not an image" in reasons[5]
    assert "no assistant turn" in reasons[6]
    assert "without '..'" in reasons[7]
    with pytest.raises(data.DatasetError, match="line 3"):
        data.require_clean(ps, skip_bad=False)
    assert "skipped 6 line(s)" in data.require_clean(ps, skip_bad=True)[0]


def test_caption_csv_and_lengths(tmp_path):
    z = make_pairs_zip(tmp_path / "caps.zip", n=4, shape="csv")
    ps = data.load_pairs(z, tmp_path / "work")
    assert ps.shape == "captions" and len(ps.pairs) == 4 and not ps.problems
    assert ps.pairs[0].messages[1]["content"] == "A red square."


class StopAtStep(Reporter):
    """A reporter whose user presses Cancel once training reaches `at`."""

    at = 2

    def progress(self, done, total=None, message=""):
        super().progress(done, total, message)
        if isinstance(done, int) and done >= self.at:
            self.request_stop()


def _losses(run_dir):
    return {e["step"]: e["train_loss"] for e in read_events(run_dir)
            if e.get("type") == "metrics" and "train_loss" in e}


@pytest.mark.slow
def test_lora_steps_change_the_answer_resume_continues_and_chat_uses_the_adapter(studio,
                                                                                 tmp_path):
    from tabs.vlm.config import VLMAdaptConfig
    from tabs.vlm.engine import VLMEngine, VLMSource
    from tabs.vlm.train import run

    base = make_tiny_vlm(tmp_path / "base", "qwen2-vl", seed=3)
    z = make_pairs_zip(tmp_path / "pairs.zip", n=6)
    cfg = VLMAdaptConfig(base_model=str(base), train_file=str(z), quantization="none",
                         max_steps=6, save_steps=2, eval_steps=0, grad_accumulation=1,
                         learning_rate=5e-3, warmup_steps=0, lora_r=8, lora_alpha=16,
                         gradient_checkpointing=False, eval_fraction=0.2, sample_count=1,
                         sample_tokens=8, schedule="constant_with_warmup").to_dict()
    run_dir = tmp_path / "run"
    first = StopAtStep(run_dir)
    run(cfg, first)
    first.close()
    stopped = _losses(run_dir)
    assert max(stopped) == 2 and (run_dir / "adapter" / "adapter_config.json").is_file()
    assert not (run_dir / "samples.json").exists()  # cancelled: no final evaluation

    again = Reporter(run_dir, resume=True)
    run(cfg, again)
    again.close()
    log = (run_dir / "log.txt").read_text()
    assert "resumed from step 2" in log
    losses = _losses(run_dir)
    assert max(losses) == 6 and 3 in losses
    assert losses[6] < losses[1]  # the loss went on down from where it stopped

    [sample] = json.loads((run_dir / "samples.json").read_text())
    assert sample["adapter"] != sample["base"]  # a few steps changed the answer
    card = json.loads((run_dir / "adapter" / "run_card.json").read_text())
    assert card["base_model"] == str(base)

    # chat with it: the engine (fast decode path + the adapter) answers like the trained model
    engine = VLMEngine(studio, VLMSource(str(base), "fp32"), adapter=str(run_dir / "adapter"))
    ps = data.load_pairs(run_dir / "inputs" / next((run_dir / "inputs").iterdir()).name,
                         tmp_path / "w2")
    pair = next(p for p in ps.pairs if p.images[0].name == Path(sample["picture"]).name)
    msgs = data.engine_messages(pair.messages[:1], [str(pair.images[0])])
    reply = engine.chat(msgs, GenerationSettings(temperature=0, max_new_tokens=8)).text
    assert reply == sample["adapter"]
    plain = VLMEngine(studio, VLMSource(str(base), "fp32"))
    assert plain.chat(msgs, GenerationSettings(temperature=0, max_new_tokens=8)).text \
        == sample["base"]


def test_check_data_measures_pictures_and_adapters_stay_inside_the_home(studio, tmp_path):
    from tabs.vlm import adapt
    from tabs.vlm.tiny import make_processor, tokenizer_for

    base = tmp_path / "base"
    from transformers import Qwen2VLConfig

    make_processor("qwen2-vl", tokenizer_for("qwen2-vl")).save_pretrained(base)
    Qwen2VLConfig().save_pretrained(base)  # a model folder's config (no weights needed here)
    z = make_pairs_zip(tmp_path / "pairs.zip", n=5)
    v = adapt.validate(studio, adapt.stage(studio, str(z)), str(base), 64)
    text = v.markdown()
    assert "5 usable of 5" in text and "Longer than 64 tokens (would be skipped):** 0" in text
    assert int(v.histogram["examples"].sum()) == 5
    short = adapt.validate(studio, adapt.stage(studio, str(z)), str(base), 16)
    assert short.too_long == 5  # the picture's tokens alone pass 16
    assert "line 1" in v.preview and "What colour is the square?" in v.preview

    with pytest.raises(ValueError, match="outside the studio home"):
        adapt.adapter_folder(studio, str(tmp_path))
    inside = studio.settings.home / "runs" / "x" / "adapter"
    inside.mkdir(parents=True)
    with pytest.raises(ValueError, match="not a LoRA adapter folder"):
        adapt.adapter_folder(studio, str(inside))
    (inside / "adapter_config.json").write_text("{}")
    assert adapt.adapter_folder(studio, str(inside)) == str(inside.resolve())
    assert adapt.adapter_folder(studio, "") is None
