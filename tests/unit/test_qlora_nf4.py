"""The compilable NF4 path (tabs.qlora.nf4) against bitsandbytes' own CPU implementation: same
dequantized weights bit for bit, same layer outputs eagerly and compiled, storage untouched."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")


def _quantized(shape, nested: bool):
    import bitsandbytes.functional as F

    w = (torch.randn(*shape) * 0.02).to(torch.bfloat16)
    return F.quantize_4bit(w, blocksize=64, compress_statistics=nested, quant_type="nf4",
                           quant_storage=torch.bfloat16)


@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("shape", [(256, 512), (300, 448)])  # 2,100 blocks: not a multiple of 256
def test_dequantize_matches_bitsandbytes_bit_for_bit(nested, shape):
    import bitsandbytes.functional as F

    from tabs.qlora.nf4 import dequantize_nf4

    torch.manual_seed(0)
    q, qs = _quantized(shape, nested)
    ours = dequantize_nf4(q.view(torch.uint8).reshape(-1), qs.absmax,
                          qs.state2.absmax if nested else None,
                          qs.state2.code if nested else None, qs.offset if nested else None,
                          qs.code, tuple(qs.shape), 64, torch.bfloat16)
    assert torch.equal(ours, F.dequantize_4bit(q, qs))


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        kw = dict(compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True,
                  quant_storage=torch.bfloat16)
        self.up = bnb.nn.Linear4bit(128, 192, bias=False, **kw)
        self.down = bnb.nn.Linear4bit(192, 128, bias=True, **kw)
        for lin in (self.up, self.down):
            lin.weight = bnb.nn.Params4bit(
                (lin.weight.data * 1.0).to(torch.bfloat16), requires_grad=False,
                quant_type="nf4", compress_statistics=True,
                quant_storage=torch.bfloat16)._quantize("cpu")
        self.down.bias.data = self.down.bias.data.to(torch.bfloat16)

    def forward(self, x):
        return self.down(torch.nn.functional.silu(self.up(x)))


def test_compiled_path_matches_bitsandbytes_forward_and_backward():
    from tabs.qlora.nf4 import compiled_nf4

    torch.manual_seed(0)
    block = _Block()
    keys = list(block.state_dict())
    x = torch.randn(2, 16, 128, dtype=torch.bfloat16, requires_grad=True)
    ref = block(x)
    ref.float().sum().backward()
    ref_grad, x.grad = x.grad.clone(), None

    assert compiled_nf4(block) == 2
    assert compiled_nf4(block) == 0  # already done: nothing twice
    assert torch.equal(block(x), ref)  # eager: bitsandbytes' own forward
    out = torch.compile(block)(x)
    out.float().sum().backward()
    assert (out.float() - ref.float()).abs().max().item() < 0.02
    assert torch.allclose(x.grad.float(), ref_grad.float(), atol=1e-2, rtol=1e-2)
    assert list(block.state_dict()) == keys  # saved weights and adapters are unchanged
