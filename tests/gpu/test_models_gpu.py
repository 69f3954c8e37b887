"""On the GPU machine: the manager's pinned warm tier really frees and restores a 4-bit model."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def tiny_llama_4bit():
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig

    cfg = LlamaConfig(vocab_size=1024, hidden_size=512, intermediate_size=1024,
                      num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4)
    import tempfile

    d = tempfile.mkdtemp()
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                           bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(d, quantization_config=q, device_map="cuda")


def test_pinned_swap_round_trip_of_4bit_model():
    from studio.devices import CudaProbe
    from studio.models import ModelManager, ModelSpec, PinnedSwap

    probe = CudaProbe()
    mgr = ModelManager(budget=8 * 1024**3, probe=probe, warm_bytes=8 * 1024**3)
    mgr.register(ModelSpec("m", load=lambda d: tiny_llama_4bit(), **PinnedSwap().spec_kwargs()))
    ids = torch.randint(0, 1024, (1, 16), device="cuda")
    with mgr.use("m") as m, torch.inference_mode():
        ref = m(input_ids=ids).logits.float().cpu()  # also allocates cuBLAS workspaces
    size = mgr.stats("m")["size"]
    with_model = probe.allocated()
    for _ in range(2):
        mgr._evict_one("m", reason="test")
        assert mgr.stats("m")["state"] == "warm"
        freed = with_model - probe.allocated()
        assert freed >= 0.9 * size, (freed, size)  # the weights really left the GPU
        with mgr.use("m") as m, torch.inference_mode():
            out = m(input_ids=ids).logits.float().cpu()
        assert torch.equal(out, ref)  # same weights, same quant state: identical logits
    assert mgr.load_counts["m"] == 1 and mgr.stats("m")["restores"] == 2
