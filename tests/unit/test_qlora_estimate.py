"""'Will it fit?': the estimate moves the right way with each setting and says what to change."""

from __future__ import annotations

from tabs.qlora.config import QLoRAConfig
from tabs.qlora.estimate import LLAMA31_8B, estimate, estimate_for_config, load_arch

GIB = 1024**3


def test_8b_at_2048_fits_12gb_only_with_checkpointing():
    on = estimate(LLAMA31_8B, seq_len=2048, micro_batch=1, rank=16, budget=12 * GIB)
    off = estimate(LLAMA31_8B, seq_len=2048, micro_batch=1, rank=16, checkpointing=False,
                   budget=12 * GIB)
    assert on.fits and not off.fits
    assert 4.5 * GIB < on.parts["weights"] < 6 * GIB  # ~8B at 4 bits + 16-bit embeddings
    assert any("checkpointing on" in s for s in off.suggestions)


def test_long_sequence_suggests_a_length_that_fits():
    e = estimate(LLAMA31_8B, seq_len=16384, micro_batch=2, rank=64, budget=12 * GIB)
    assert not e.fits and "does NOT fit" in e.describe()
    seq = [s for s in e.suggestions if s.startswith("max sequence length")]
    assert seq and int(seq[0].split()[3]) < 16384
    smaller = estimate(LLAMA31_8B, seq_len=int(seq[0].split()[3]), micro_batch=2, rank=64,
                       budget=12 * GIB)
    assert smaller.fits


def test_config_estimate_on_cpu_is_plain_lora_from_a_local_config(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=500
                ).save_pretrained(tmp_path)
    arch = load_arch(str(tmp_path))
    assert (arch.hidden, arch.layers, arch.kv_width) == (64, 2, 32)
    cfg = QLoRAConfig(base_model=str(tmp_path), lora_r=4)
    cpu = estimate_for_config(cfg, arch, budget=GIB, cuda=False)
    gpu = estimate_for_config(cfg, arch, budget=GIB, cuda=True)
    assert cpu.parts["weights"] > gpu.parts["weights"]  # no 4-bit on the CPU
    assert cpu.lora_params == 2 * 4 * (2 * (64 + 64) + 2 * (64 + 32) + 3 * (64 + 128))
