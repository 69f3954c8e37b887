""""Will it fit?" for the Vision tab: the catalogue's 7B models fit a 12 GB card in 4-bit,
the estimate covers what the GPU bench measured, a bigger picture cap costs more, and the
adapt estimate counts the image tokens and the frozen vision tower."""

from __future__ import annotations

import json
from pathlib import Path

from tabs.vlm.config import VLMAdaptConfig
from tabs.vlm.estimate import adapt_estimate, chat_estimate, load_vlm_arch

GiB = 1024**3
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "vlm.json"


def test_chat_estimates_fit_12gb_and_cover_the_measured_peaks():
    llava = load_vlm_arch("llava-hf/llava-1.5-7b-hf")
    qwen = load_vlm_arch("Qwen/Qwen2.5-VL-7B-Instruct")
    assert llava.image_tokens() == 576 and qwen.image_tokens(1024 * 1024) == 1337
    e_llava = chat_estimate(llava, context=4096, max_pixels=None, budget=12 * GiB)
    e_qwen = chat_estimate(qwen, context=8192, max_pixels=1024 * 1024, budget=12 * GiB)
    assert e_llava.fits and e_qwen.fits
    measured = json.loads(RESULTS.read_text())["models"]  # H200 capped at 12 GiB, bench/vlm.py
    assert e_llava.total >= measured["LLaVA-1.5-7B"]["ours"]["peak_vram_gib"] * GiB
    assert e_qwen.total >= measured["Qwen2.5-VL-7B"]["ours"]["peak_vram_gib"] * GiB
    bigger = chat_estimate(qwen, context=8192, max_pixels=2048 * 2048, budget=12 * GiB)
    assert bigger.total > e_qwen.total
    unquantized = chat_estimate(qwen, context=8192, max_pixels=1024 * 1024, four_bit=False,
                                budget=12 * GiB)
    assert not unquantized.fits and "does NOT fit" in unquantized.describe()


def test_adapt_estimate_counts_pictures_and_the_projector():
    arch = load_vlm_arch("llava-hf/llava-1.5-7b-hf")
    cfg = VLMAdaptConfig(base_model="llava-hf/llava-1.5-7b-hf", train_file="x.zip",
                         max_seq_length=1088)  # 1 picture (576) + 512 text tokens
    est = adapt_estimate(arch, cfg, cuda=True, budget=12 * GiB)
    assert est.fits and est.total <= 10 * GiB
    assert "576 image tokens" in est.describe()
    with_proj = adapt_estimate(arch, VLMAdaptConfig(**{**cfg.to_dict(),
                                                      "train_projector": True}),
                               cuda=True, budget=12 * GiB)
    assert with_proj.total > est.total and "projector copy" in with_proj.describe()
    measured = json.loads(RESULTS.read_text())["models"]["LLaVA-1.5-7B"]
    assert est.total >= measured["qlora_1_picture_512_text_tokens"]["ours"]["peak_vram_gib"] * GiB


def test_a_local_folder_is_read_from_its_config(tmp_path):
    from transformers import Qwen2VLConfig

    Qwen2VLConfig(text_config={"hidden_size": 64, "intermediate_size": 128,
                               "num_hidden_layers": 2, "num_attention_heads": 4,
                               "num_key_value_heads": 2, "vocab_size": 600},
                  vision_config={"depth": 2, "embed_dim": 32}).save_pretrained(tmp_path)
    arch = load_vlm_arch(str(tmp_path))
    assert arch.model_type == "qwen2_vl" and arch.text.hidden == 64 and arch.vision_layers == 2
    assert arch.vision_hidden == 32 and arch.image_tokens(28 * 28 * 16) == 16
