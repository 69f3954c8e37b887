"""'Will it fit?': the estimate moves the right way with each setting and says what to change."""

from __future__ import annotations

import pytest

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


def test_fused_loss_and_offload_are_what_make_long_sequences_fit():
    """Against the H100 measurements in bench/results/qlora.json: 2048 tokens fit 8 GiB only
    without the full logits, and 16k tokens fit 12 GiB only with activations offloaded."""
    kw = dict(micro_batch=1, rank=16, budget=12 * GIB, suggest=False)
    plain = estimate(LLAMA31_8B, seq_len=2048, **kw)
    fused = estimate(LLAMA31_8B, seq_len=2048, fused_ce=True, **kw)
    assert plain.total > 10 * GIB and fused.total < 8 * GIB
    assert "fused cross-entropy" in fused.describe()
    long_ = estimate(LLAMA31_8B, seq_len=16384, fused_ce=True, **kw)
    long_off = estimate(LLAMA31_8B, seq_len=16384, fused_ce=True, offload=True, **kw)
    assert not long_.fits and long_off.fits
    hint = estimate(LLAMA31_8B, seq_len=16384, micro_batch=1, rank=16, fused_ce=True,
                    budget=12 * GIB)
    assert any(s.startswith("offload activations") for s in hint.suggestions)


def test_auto_offload_and_optimizer_follow_the_budget(tmp_path, monkeypatch):
    from tabs.qlora import estimate as est

    monkeypatch.setattr(est, "fused_kernels_usable", lambda cfg, cuda: cuda)
    short = QLoRAConfig(base_model="meta-llama/Llama-3.1-8B-Instruct", max_seq_length=2048)
    long_ = QLoRAConfig(base_model="meta-llama/Llama-3.1-8B-Instruct", max_seq_length=16384)
    assert not est.resolve_offload(short, LLAMA31_8B, 12 * GIB, cuda=True)
    assert est.resolve_offload(long_, LLAMA31_8B, 12 * GIB, cuda=True)
    assert not est.resolve_offload(long_, LLAMA31_8B, 12 * GIB, cuda=False)
    assert est.optimizer_name(short, True, False) == "adamw_torch_fused"
    assert est.optimizer_name(short, True, True) == "paged_adamw_8bit"
    assert est.optimizer_name(short, False, False) == "adamw_torch"
    e = est.estimate_for_config(long_, LLAMA31_8B, 12 * GIB, cuda=True)
    assert e.fits and "offloaded to CPU" in e.describe()


def test_offloaded_activations_give_the_same_gradients(tmp_path):
    """save_on_cpu around the forward moves what backward needs to CPU RAM and back; the
    gradients must not change (checked on CPU, where the copies are plain)."""
    import torch

    from tabs.qlora import train
    from tabs.qlora.tiny import make_tiny_base

    base = make_tiny_base(tmp_path / "base")
    cfg = QLoRAConfig(base_model=str(base), lora_r=4, lora_dropout=0.0)
    grads = []
    for offload in (False, True):
        torch.manual_seed(0)  # same LoRA init
        _, model, notes = train.prepare_model(cfg, "cpu", torch.float32, False, offload)
        model.train()
        ids = torch.randint(0, model.config.vocab_size, (1, 24))
        with train.activation_context(offload):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.requires_grad})
        assert notes[-1] == train.activations_note(cfg, "cpu", offload)  # no GPU: CPU RAM
    # what the log says on a GPU, where offloading means something
    assert "offloaded to CPU RAM" in train.activations_note(cfg, "cuda", True)
    assert "on the GPU" in train.activations_note(cfg, "cuda", False)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n])


@pytest.mark.parametrize("field", ["quantization", "precision", "schedule", "fused_kernels",
                                   "compile_layers", "offload_activations"])
def test_every_choice_setting_refuses_an_unknown_value(field):
    with pytest.raises(ValueError, match="must be one of"):
        QLoRAConfig.from_dict({"base_model": "x", field: "warp-speed"})
