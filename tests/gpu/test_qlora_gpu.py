"""On the GPU machine: the QLoRA tab's own training job in 4-bit NF4 on CUDA, through the job
manager, with the job process capped like a 12 GB card (STUDIO_EMULATE_CARD).

- a tiny Llama in 4-bit learns a memorizable set (loss falls, adapter saved, base vs adapter
  samples written);
- with ``QLORA_8B_BASE`` pointing at a Llama-3.1-8B-architecture folder (``bench/qlora.py
  --base DIR`` makes one with random weights), the real-size job trains 2048-token examples
  inside the 12 GiB cap and reports its VRAM peak.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

GiB = 1024**3


@pytest.fixture
def cuda_studio(tmp_path, monkeypatch):
    from studio.config import Settings
    from studio.context import build_studio

    monkeypatch.setenv("STUDIO_EMULATE_CARD", "12GiB")
    studio = build_studio(Settings(home=tmp_path / "home", profile="small",
                                   vram_budget=12 * GiB))
    assert studio.device == "cuda"
    yield studio
    studio.close()


def _losses(view) -> list[float]:
    return [m["train_loss"] for m in view.metrics if "train_loss" in m]


def test_tiny_qlora_job_in_4bit_learns(cuda_studio, tmp_path):
    from tabs.qlora import service
    from tabs.qlora.config import QLoRAConfig
    from tabs.qlora.tiny import fact_records, make_tiny_base, write_jsonl

    base = make_tiny_base(tmp_path / "base", hidden=128, layers=2)
    data = write_jsonl(fact_records("alpaca") * 4, tmp_path / "facts.jsonl")
    cfg = QLoRAConfig(base_model=str(base), train_file=str(data), eval_fraction=0.125,
                      max_seq_length=128, lora_r=8, lora_alpha=16, micro_batch_size=4,
                      grad_accumulation=1, learning_rate=3e-3, max_steps=80, warmup_steps=0,
                      eval_steps=40, save_steps=40, sample_prompts=2, sample_tokens=8)
    run_id = service.submit(cuda_studio, cfg)
    v = cuda_studio.jobs.wait(run_id, timeout=300)
    run_dir = Path(v.run_dir)
    log = (run_dir / "log.txt").read_text()
    print(log[-3000:])
    assert v.status == "succeeded", v.error or v.log_tail
    assert "4-bit NF4 + double quant on cuda" in log
    assert "4-bit linears dequantized inside them" in log  # the compiled NF4 path trained
    losses = _losses(v)
    assert losses[-1] < losses[0] / 2, losses
    results = json.loads((run_dir / "results.json").read_text())
    assert results["quantization"] == "nf4" and results["vram_peak_gib"] < 12
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert len(json.loads((run_dir / "samples.json").read_text())) == 2


@pytest.mark.skipif(not os.environ.get("QLORA_8B_BASE"), reason="set QLORA_8B_BASE")
def test_8b_qlora_job_trains_2048_tokens_inside_12gib(cuda_studio, tmp_path):
    from tabs.qlora import service
    from tabs.qlora.config import QLoRAConfig
    from tabs.qlora.tiny import FACTS, write_jsonl

    long_answer = " ".join(a for _, a in FACTS) * 40  # ~2k tokens of answer per example
    records = [{"instruction": q, "input": "", "output": f"{a} {long_answer}"}
               for q, a in FACTS]
    data = write_jsonl(records, tmp_path / "long.jsonl")
    from bench.qlora import make_base

    base = make_base(Path(os.environ["QLORA_8B_BASE"]), tiny=False)  # reused when it exists
    cfg = QLoRAConfig(base_model=str(base), train_file=str(data),
                      eval_fraction=0.25, max_seq_length=2048, micro_batch_size=1,
                      grad_accumulation=1, max_steps=4, warmup_steps=0, eval_steps=0,
                      save_steps=0, sample_prompts=1, sample_tokens=8, logging_steps=1)
    est = service.estimate(cuda_studio, cfg)
    assert est.fits, est.describe()
    run_id = service.submit(cuda_studio, cfg)
    v = cuda_studio.jobs.wait(run_id, timeout=420)
    run_dir = Path(v.run_dir)
    log = (run_dir / "log.txt").read_text()
    print(log[-4000:])
    print("estimate:", est.describe())
    assert v.status == "succeeded", v.error or v.log_tail
    assert "4-bit NF4 + double quant on cuda" in log
    assert "224 4-bit linears dequantized inside them" in log
    results = json.loads((run_dir / "results.json").read_text())
    assert results["vram_peak_gib"] <= 12.0
    assert results["vram_peak_gib"] <= est.total / GiB  # "will it fit?" is not optimistic
    tps = [m["tokens_per_s"] for m in v.metrics if m.get("tokens_per_s")]
    print(f"8B job: VRAM peak {results['vram_peak_gib']:.2f} GiB, tokens/s {tps}, "
          f"estimate {est.total / GiB:.2f} GiB")


def _linear4bit(n_in: int, n_out: int, bias: bool, nested: bool):
    import bitsandbytes as bnb

    lin = bnb.nn.Linear4bit(n_in, n_out, bias=bias, compute_dtype=torch.bfloat16,
                            quant_type="nf4", compress_statistics=nested,
                            quant_storage=torch.bfloat16)
    w = (torch.randn(n_out, n_in) * 0.02).to(torch.bfloat16)
    lin.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4",
                                   compress_statistics=nested, quant_storage=torch.bfloat16)
    if bias:
        lin.bias = torch.nn.Parameter(torch.randn(n_out).to(torch.bfloat16), requires_grad=False)
    return lin.cuda()


@pytest.mark.parametrize("nested", [True, False])
def test_compiled_nf4_matches_bitsandbytes_cuda(nested):
    """The compilable NF4 path dequantizes bit for bit what bitsandbytes' CUDA kernel does, and a
    compiled forward/backward matches bitsandbytes' eager one."""
    import bitsandbytes.functional as F

    from tabs.qlora.nf4 import compiled_nf4, dequantize_nf4

    torch.manual_seed(0)
    lin = _linear4bit(4096, 1024 + 64, bias=True, nested=nested)
    qs = lin.weight.quant_state
    ref_w = F.dequantize_4bit(lin.weight.data, qs)
    ours = torch.compile(dequantize_nf4)(
        lin.weight.data.view(torch.uint8).reshape(-1), qs.absmax,
        qs.state2.absmax if nested else None, qs.state2.code if nested else None,
        qs.offset if nested else None, qs.code, tuple(qs.shape), qs.blocksize, torch.bfloat16)
    assert torch.equal(ours, ref_w)

    x = torch.randn(2, 300, 4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    ref = lin(x)
    ref.float().square().mean().backward()
    ref_grad, x.grad = x.grad.clone(), None
    assert compiled_nf4(lin) == 1
    fast = torch.compile(lin)
    out = fast(x)
    out.float().square().mean().backward()
    assert (out.float() - ref.float()).abs().max().item() <= 0.02 * ref.float().abs().max().item()
    rel = (x.grad.float() - ref_grad.float()).norm() / ref_grad.float().norm()
    assert rel.item() < 1e-2, rel.item()
    assert torch.equal(lin(x), ref)  # eager calls still go through bitsandbytes
