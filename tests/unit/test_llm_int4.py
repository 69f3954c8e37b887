"""The engine's int4 decode format on CPU (PyTorch's CPU int4 kernel): quantize/dequantize round
trip, packed layer = its dequantized weights, the fast route = its eager reference on a tiny
Llama, LoRA on the int4 base = PEFT on the same weights, the warm tier, and the ledger's format."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from studio.llm import (  # noqa: E402
    GenerationSettings,
    ModelSource,
    TransformersEngine,
    int4,  # noqa: E402
)
from studio.llm.testing import (  # noqa: E402
    build_tokenizer,
    random_lora_adapter,
    save_chat_model,
    tiny_model,
)

GREEDY = GenerationSettings(temperature=0, max_new_tokens=24)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    tok = build_tokenizer("llama3.1")
    model = tiny_model("llama3.1", tok, hidden=128, layers=2, heads=4, kv_heads=2, seed=5)
    folder = save_chat_model(model, tok, tmp_path_factory.mktemp("int4") / "m")
    return folder, model, tok


def dequantized_copy(model):
    """`model` with every int4 layer replaced by an fp32 nn.Linear of its dequantized weight."""
    import copy

    ref = copy.deepcopy(model)
    for layer in ref.model.layers:
        for name, mod in list(layer.named_modules()):
            if isinstance(mod, torch.nn.Linear):
                parent = layer.get_submodule(name.rsplit(".", 1)[0]) if "." in name else layer
                w = mod.weight.data
                q, s, z = int4.quantize(w, int4.pick_group(w.shape[1]))
                mod.weight.data = int4.dequantize(q, s, z, int4.pick_group(w.shape[1]))
                setattr(parent, name.rsplit(".", 1)[-1], mod)
    if int4.head_format(int4.QUANTIZE_HEAD) == "int8":  # the shipped head: int8 per row
        q8, s8 = int4.quantize_int8(ref.lm_head.weight.data)
        ref.lm_head.weight.data = q8.float() * s8[:, None]
    return ref


def test_round_trip_is_exact_on_the_grid_and_close_elsewhere():
    g = torch.Generator().manual_seed(0)
    n, k, group = 64, 256, 128
    q = torch.randint(0, 16, (n, k), generator=g)
    q[:, ::group] = 0  # every group spans the whole grid, so min/max fix scale and zero
    q[:, 1::group] = 15
    scale = torch.rand(n, k // group, generator=g) * 0.01 + 1e-3
    lo = -torch.rand(n, k // group, generator=g) * 0.05
    w = ((q.float().reshape(n, k // group, group) * scale[..., None]) + lo[..., None]
         ).reshape(n, k)
    q2, s2, z2 = int4.quantize(w, group)
    assert torch.equal(q2.long(), q)
    assert torch.allclose(int4.dequantize(q2, s2, z2, group), w, atol=1e-6)
    # random Gaussian weights: within half a step everywhere, small error overall, and the
    # clip search + refit is no worse than plain min/max rounding
    w = torch.randn(256, 512, generator=g) * 0.02
    q, s, z = int4.quantize(w, group)
    d = int4.dequantize(q, s, z, group)
    step = s.repeat_interleave(group, 1)
    inside = (w >= d - step) & (w <= d + step)
    assert inside.float().mean() > 0.97  # the clipped tails are the rest
    rel = ((d - w).pow(2).mean().sqrt() / w.std()).item()
    plain = int4.dequantize(*int4.quantize(w, group, clip_search=False, refine=0), group)
    assert rel < 0.1
    assert rel <= ((plain - w).pow(2).mean().sqrt() / w.std()).item()
    assert q.dtype == torch.uint8 and int(q.max()) <= 15


def test_packed_layer_computes_with_its_dequantized_weight():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(96, 320, generator=g) * 0.05  # 320: group 64, 4 inner k-tiles
    b = torch.randn(96, generator=g)
    lin = int4.Int4Linear.from_weight(w, b, "cpu", group=128)
    assert lin.group_size == 64
    q, s, z = int4.quantize(w, 64)
    ref = torch.nn.functional.linear(x := torch.randn(2, 7, 320, generator=g),
                                     int4.dequantize(q, s, z, 64), b)
    assert torch.allclose(lin(x), ref, atol=1e-4)
    assert lin.weight_bytes < w.numel() * 2 / 3  # well under bf16


def test_int8_head_round_trip_and_layer():
    """The LM head's int8 format: per-row symmetric, within half a step of the float weight;
    the layer (CPU: PyTorch's int8 kernel) computes with its dequantized weight."""
    g = torch.Generator().manual_seed(6)
    w = torch.randn(200, 128, generator=g) * 0.05
    w[3] = 0  # an all-zero row keeps a positive scale
    q, s = int4.quantize_int8(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127 and bool((s > 0).all())
    d = q.float() * s[:, None]
    assert bool(((d - w).abs() <= s[:, None] / 2 + 1e-7).all())
    b = torch.randn(200, generator=g)
    lin = int4.Int8Linear.from_weight(w, b, "cpu")
    x = torch.randn(3, 5, 128, generator=g)
    assert torch.allclose(lin(x), torch.nn.functional.linear(x, lin.dequantized(), b),
                          atol=1e-4)
    assert lin.weight_bytes < w.numel() * 2 * 0.55  # about half of bf16


def test_int8_head_replaces_an_untied_head_only():
    tok = build_tokenizer("llama3.1")
    untied = tiny_model("llama3.1", tok, seed=8)
    info = int4.quantize_model(untied, "cpu", head="int8")
    assert isinstance(untied.lm_head, int4.Int8Linear) and info["head"] == "int8"
    tied = tiny_model("llama3.1", tok, seed=8)
    tied.lm_head.weight = tied.model.embed_tokens.weight
    int4.quantize_model(tied, "cpu", head="int8")
    assert isinstance(tied.lm_head, torch.nn.Linear)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight  # still one shared tensor
    assert untied.studio_format == "int4 g64 + int8 head (tinygemm)"
    assert tied.studio_format == "int4 g64 (tinygemm)"  # the ledger says what was done
    assert int4.format_label(64, "int8") == "int4 g64 + int8 head (tinygemm)"
    assert int4.format_label(64, True) == "int4 g64 + int4 head (tinygemm)"
    assert int4.format_label(128, False) == "int4 g128 (tinygemm)"
    with pytest.raises(ValueError):
        int4.head_format("fp8")


def test_fast_route_equals_eager_reference(llama, studio):
    """The engine's int4 route: the StaticDecoder's logits equal the model's own forward over
    the same int4 layers, and that equals fp32 over the dequantized weights."""
    from studio.llm.engine import load_llm
    from studio.llm.fast import StaticDecoder

    folder, model, _ = llama
    llm = load_llm(ModelSource(str(folder), "int4"), "cpu", 512)
    assert llm.quantization == "int4" and "int4" in llm.format
    assert not any(isinstance(m, torch.nn.Linear) for m in llm.model.model.layers.modules())
    assert len(int4.int4_layers(llm.model)) == 2 * 4  # q/k/v and gate/up fused
    # what ships: group 64 with an int8 LM head (bench/results/llm.json)
    assert llm.format == "int4 g64 + int8 head (tinygemm)"
    assert isinstance(llm.model.lm_head, int4.Int8Linear)
    ids = torch.randint(0, model.config.vocab_size, (1, 90),
                        generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        eager = llm.model(ids).logits[0]
        ref = dequantized_copy(model)(ids).logits[0]
    assert torch.allclose(eager, ref, atol=1e-3)
    dec = llm.decoder
    assert isinstance(dec, StaticDecoder)
    got = [dec.prefill(ids[0, :60].tolist())[0]]
    got += [dec.step(int(t))[0] for t in ids[0, 60:89]]
    assert torch.allclose(torch.stack(got), eager[59:89], atol=1e-3)
    # int4 moves the logits, but not far from the float model on this scale
    with torch.no_grad():
        fp = model(ids).logits[0]
    assert not torch.allclose(eager, fp, atol=1e-5)


def test_lora_on_the_int4_base_equals_peft_on_the_same_weights(llama, tmp_path):
    from peft import PeftModel

    from studio.llm.engine import load_llm

    folder, model, _ = llama
    adapter = random_lora_adapter(model, tmp_path / "adapter")
    llm = load_llm(ModelSource(str(folder), "int4"), "cpu", 512)
    ids = torch.randint(0, model.config.vocab_size, (1, 40),
                        generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = llm.model(ids).logits[0]
        assert int4.attach_lora(llm.model, adapter) == 2 * 3  # q, v, down in 2 layers
        ours = llm.model(ids).logits[0]
        peft = PeftModel.from_pretrained(dequantized_copy(model), str(adapter)).eval()
        ref = peft(ids).logits[0]
    assert not torch.allclose(ours, base, atol=1e-3)
    assert torch.allclose(ours, ref, atol=2e-3)
    # the decode path sees the adapter too
    got = llm.decoder.prefill(ids[0].tolist())[0]
    assert torch.allclose(got, ours[-1], atol=2e-3)
    int4.detach_lora(llm.model)
    with torch.no_grad():
        assert torch.allclose(llm.model(ids).logits[0], base)


def test_engine_adapter_attach_detach_on_int4(llama, studio, tmp_path):
    folder, model, _ = llama
    adapter = random_lora_adapter(model, tmp_path / "adapter", seed=7)
    engine = TransformersEngine(studio, ModelSource(str(folder), "int4"), max_context=512)
    msgs = [{"role": "user", "content": "hello there"}]
    before = engine.chat(msgs, GREEDY).text
    engine.attach_adapter(str(adapter))
    with_adapter = engine.chat(msgs, GREEDY).text
    llm = studio.models.get_loaded(engine.key)
    assert llm.adapter and any(m.lora_A is not None for _, m in int4.int4_layers(llm.model))
    engine.detach_adapter()
    assert engine.chat(msgs, GREEDY).text == before
    assert with_adapter != before


def test_warm_tier_restore_decodes_identically(llama, tmp_path):
    """Evicted to the warm tier (cache and graphs freed), restored, rebuilt: same tokens."""
    from studio.config import Settings
    from studio.context import build_studio

    folder, _, _ = llama
    studio = build_studio(Settings(home=tmp_path / "home"), start_jobs=False)
    studio.models.warm_bytes = 1 << 30  # CPU studios keep no warm tier; this test wants one
    engine = TransformersEngine(studio, ModelSource(str(folder), "int4"), max_context=512)
    msgs = [{"role": "user", "content": "count to five"}]
    first = engine.chat(msgs, GREEDY).text
    llm = studio.models.get_loaded(engine.key)
    studio.models._evict_one(engine.key, "test")  # what making room for another model does
    assert studio.models.stats(engine.key)["state"] == "warm"
    assert llm.decoder.k_cache == []
    again = engine.chat(msgs, GREEDY).text
    assert studio.models.stats(engine.key)["restores"] == 1
    assert again == first
    rows = {r.key: r for r in studio.models.loaded()}
    assert "int4" in rows[engine.key].title


def test_auto_is_int4_on_cuda_for_llama_family(llama, tmp_path):
    from studio.llm.engine import planned_quantization

    folder, _, _ = llama
    assert planned_quantization(ModelSource(str(folder)), "cuda") == "int4"
    assert planned_quantization(ModelSource(str(folder)), "cpu") == "fp32"
    assert planned_quantization(ModelSource(str(folder), "nf4"), "cuda") == "nf4"
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    assert planned_quantization(ModelSource(str(gguf)), "cuda") == "gguf"


@pytest.mark.parametrize("family", ["llama3.1", "qwen2.5"])
def test_fused_glue_step_equals_the_module_by_module_step(family):
    """The decode step with residual+norm, RoPE and SiLU*up fused (eager here; compiled on
    CUDA) gives the same logits as the module-by-module step and the model's own forward."""
    from studio.llm.fast import StaticDecoder

    tok = build_tokenizer(family)
    model = tiny_model(family, tok, seed=4)
    ids = torch.randint(0, len(tok), (1, 70), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits[0]
    fused, plain = StaticDecoder(model, 256), StaticDecoder(model, 256)
    plain.fuse_glue = False
    assert fused.fuse_glue and not fused.compile_glue  # CPU: the eager fused functions
    for d in (fused, plain):
        d.prefill(ids[0, :40].tolist())
    for i in range(40, 69):
        a, b = fused.step(int(ids[0, i])), plain.step(int(ids[0, i]))
        assert torch.allclose(a[0], b[0], atol=1e-5), i
        assert torch.allclose(a[0], ref[i], atol=1e-4), i


def test_triton_decode_attention_in_the_interpreter():
    """The decode attention kernels, run by Triton's CPU interpreter (the GPU test runs them
    for real): equal to softmax(q K^T) V over keys 0..pos across split edges; the fused call
    also applies RoPE and writes the new k/v into the cache; and the int8 head kernel."""
    import subprocess
    import sys
    import textwrap

    pytest.importorskip("triton")
    code = textwrap.dedent("""
        import torch
        from studio.llm.attention import decode_attention, supported
        torch.manual_seed(0)
        n_kv, n_rep, hd, L = 2, 4, 32, 300
        assert supported(hd, "cpu")
        q = torch.randn(1, n_kv, n_rep, hd)
        k, v = torch.randn(1, n_kv, L, hd), torch.randn(1, n_kv, L, hd)
        worst = 0.0
        for p in (0, 127, 128, 299):
            out = decode_attention(q, k, v, torch.tensor([p]), min(L, -(-(p + 1) // 256) * 256))
            s = q[0] @ k[0, :, :p + 1].transpose(-1, -2) * hd ** -0.5
            ref = torch.softmax(s, -1) @ v[0, :, :p + 1]
            worst = max(worst, (out[0] - ref).abs().max().item())
        # the fused call: RoPE of q and k, the cache write at pos, attention, several splits
        from studio.llm.attention import fused_decode_attention
        def rope(x, cos, sin_s):
            return x * cos + x.roll(hd // 2, -1) * sin_s
        for p in (0, 63, 64, 200, 299):
            for split in (None, 64, 128):
                kc, vc = torch.randn(1, n_kv, L, hd), torch.randn(1, n_kv, L, hd)
                qf = torch.randn(1, 1, n_kv * n_rep * hd)
                kf, vf = torch.randn(1, 1, n_kv * hd), torch.randn(1, 1, n_kv * hd)
                ang = torch.rand(hd) * 6
                cos, sin = ang.cos(), ang.sin()
                sin_s = torch.cat((-sin[:hd // 2], sin[hd // 2:]))
                kref, vref = kc.clone(), vc.clone()
                out = fused_decode_attention(qf, kf, vf, cos[None, None, None],
                                             sin_s[None, None, None], kc, vc,
                                             torch.tensor([p]), min(L, -(-(p + 1) // 256) * 256),
                                             split=split)
                qr = rope(qf.view(n_kv, n_rep, hd), cos, sin_s)
                kref[0, :, p] = rope(kf.view(n_kv, hd), cos, sin_s)
                vref[0, :, p] = vf.view(n_kv, hd)
                assert torch.allclose(kc, kref, atol=1e-5) and torch.equal(vc, vref), p
                s = qr @ kref[0, :, :p + 1].transpose(-1, -2) * hd ** -0.5
                ref = torch.softmax(s, -1) @ vref[0, :, :p + 1]
                worst = max(worst, (out[0] - ref).abs().max().item())
        # the int8 head's batch-1 kernel
        from studio.llm import int4
        w, x, b = torch.randn(100, 96), torch.randn(1, 96), torch.randn(100)
        q8, s8 = int4.quantize_int8(w)
        y = int4.int8_gemv(x, q8, s8, b, block_n=16, block_k=64)
        assert torch.allclose(y, x @ (q8.float() * s8[:, None]).T + b, atol=1e-4)
        print("worst", worst)
        assert worst < 1e-4
    """)
    import os

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "worst" in r.stdout


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_vlm_language_model_in_int4_decodes_like_its_own_generate(studio, tmp_path, family):
    """The VLM tab's language model in the engine's int4 format (vision tower untouched): the
    fast decoder (fused glue, M-RoPE for Qwen2-VL) gives the model's own greedy tokens."""
    import numpy as np
    from PIL import Image

    from tabs.vlm.engine import VLMEngine, VLMSource, embed_prompt, process
    from tabs.vlm.tiny import make_tiny_vlm

    folder = make_tiny_vlm(tmp_path / family, family, seed=1)
    engine = VLMEngine(studio, VLMSource(str(folder), "int4"))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    msgs = [{"role": "user", "content": [{"type": "image", "image": img},
                                         {"type": "text", "text": "Describe the image."}]}]
    with studio.models.use(engine.key) as llm:
        names = [n for n, _ in int4.int4_layers(llm.model)]
        assert names and all("vision" not in n for n in names)
        inputs, _ = process(llm, msgs)
        ref = llm.model.generate(**inputs, max_new_tokens=12, do_sample=False,
                                 eos_token_id=None)[0, inputs["input_ids"].shape[1]:].tolist()
        ids = inputs["input_ids"][0].tolist()
        got = list(llm.decoder.generate(ids, 12, lambda logits, _: int(logits.argmax(-1)),
                                        inputs=embed_prompt(llm.model, inputs)))
    assert got == ref
