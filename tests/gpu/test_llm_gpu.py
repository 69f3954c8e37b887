"""The LLM engine's CUDA paths: CUDA-graph decode equals eager decode, NF4 loads and streams."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from studio.llm.testing import build_tokenizer, save_chat_model, tiny_model

    tok = build_tokenizer("llama3.1")
    model = tiny_model("llama3.1", tok, hidden=256, layers=2, heads=8, kv_heads=2)
    return save_chat_model(model, tok, tmp_path_factory.mktemp("tiny") / "m"), model


def test_cuda_graph_decode_matches_eager_and_hf(tiny_folder):
    from studio.llm.fast import StaticDecoder

    _, model = tiny_folder
    model = model.to("cuda", torch.bfloat16)
    ids = torch.randint(0, model.config.vocab_size, (1, 300), generator=torch.Generator()
                        .manual_seed(0)).tolist()[0]
    with torch.inference_mode():
        ref = model(torch.tensor([ids], device="cuda")).logits[0].float()
    eager = StaticDecoder(model, 1024, use_cuda_graphs=False)
    graphs = StaticDecoder(model, 1024, use_cuda_graphs=True)
    for d in (eager, graphs):
        d.prefill(ids[:200])
    for i in range(200, 299):  # crosses the 256-token bucket: two graphs
        a, b = eager.step(ids[i]).clone(), graphs.step(ids[i]).clone()
        assert torch.allclose(a, b, atol=1e-2), i
        assert (a - ref[i]).abs().max() < 0.1 * ref.abs().max() + 0.05
    assert len(graphs._graphs) == 2
    # after a reset (adapter swap) graphs are captured afresh and still agree
    graphs.reset_graphs()
    eager.forget_prefix()
    for d in (eager, graphs):
        d.prefill(ids[:200])
    for i in range(200, 210):
        assert torch.allclose(eager.step(ids[i]).clone(), graphs.step(ids[i]).clone(), atol=1e-2)
    assert len(graphs._graphs) == 1


def test_nf4_engine_streams_and_stops(tiny_folder, tmp_path):
    from studio.config import Settings
    from studio.context import build_studio
    from studio.llm import GenerationSettings, ModelSource, TransformersEngine

    folder, _ = tiny_folder
    studio = build_studio(Settings(home=tmp_path / "home"), start_jobs=False)
    engine = TransformersEngine(studio, ModelSource(str(folder), "nf4"), max_context=1024)
    settings = GenerationSettings(max_new_tokens=200, temperature=0.8, seed=3)
    stop = threading.Event()
    texts, done = [], None
    for ev in engine.stream_chat([{"role": "user", "content": "hello"}], settings,
                                 stop_event=stop):
        if ev.kind == "text":
            texts.append(ev.text)
            if len(texts) == 5:
                stop.set()
        elif ev.kind == "done":
            done = ev
    assert done.stats.stopped and done.stats.new_tokens <= 8
    llm = studio.models.get_loaded(engine.key)
    assert type(llm.model.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    assert llm.decoder.use_cuda_graphs
    assert done.stats.peak_vram is not None


def _greedy(engine, text="hello there", n=48):
    from studio.llm import GenerationSettings

    return engine.chat([{"role": "user", "content": text}],
                       GenerationSettings(temperature=0, max_new_tokens=n)).text


def test_int4_graph_route_greedy_equals_its_eager_reference(tiny_folder):
    """The int4 engine on CUDA (tinygemm): CUDA-graph decode gives the eager path's tokens,
    and the layers really are int4."""
    from studio.llm import ModelSource
    from studio.llm.engine import load_llm
    from studio.llm.int4 import Int8Linear, int4_layers

    folder, _ = tiny_folder
    llm = load_llm(ModelSource(str(folder), "int4"), "cuda", 1024)
    assert len(int4_layers(llm.model)) == 2 * 4 and llm.decoder.use_cuda_graphs
    assert not any(isinstance(m, torch.nn.Linear) for m in llm.model.model.layers.modules())
    ids = torch.randint(0, llm.model.config.vocab_size, (300,),
                        generator=torch.Generator().manual_seed(1)).tolist()

    def run(graphs):
        from studio.llm import GenerationSettings
        from studio.llm.engine import Sampler

        llm.decoder.use_cuda_graphs = graphs
        llm.decoder.reset_graphs()
        sampler = Sampler(GenerationSettings(temperature=0, max_new_tokens=80), "cuda", 220)
        return list(llm.decoder.generate(ids[:220], 80, sampler))  # crosses a bucket

    assert run(True) == run(False)
    # what ships: int8 head, fused Triton attention (RoPE + cache write inside) at every length
    assert isinstance(llm.model.lm_head, Int8Linear)
    assert {llm.decoder._attention_kind(n) for n in (256, 1024)} == {"triton"}
    # and its logits stay with the module-by-module step (matmul attention, unfused glue)
    dec = llm.decoder
    rows = {}
    for name, kind, fuse in (("fast", "auto", True), ("plain", "matmul", False)):
        dec.decode_attention, dec.fuse_glue, dec.use_cuda_graphs = kind, fuse, True
        dec.reset_graphs()
        dec.prefill(ids[:200])
        rows[name] = torch.stack([dec.step(t)[0].clone() for t in ids[200:280]])
    dec.decode_attention = "auto"
    diff = (rows["fast"] - rows["plain"]).abs().max()
    assert diff < 0.05 * rows["plain"].abs().max() + 0.05, float(diff)
    assert (rows["fast"].argmax(-1) == rows["plain"].argmax(-1)).float().mean() > 0.9


def test_warm_tier_restore_rebuilds_graphs_and_decodes_identically(tiny_folder, tmp_path):
    from studio.config import Settings
    from studio.context import build_studio
    from studio.llm import ModelSource, TransformersEngine

    folder, _ = tiny_folder
    for quant in ("int4", "nf4"):
        studio = build_studio(Settings(home=tmp_path / quant), start_jobs=False)
        engine = TransformersEngine(studio, ModelSource(str(folder), quant), max_context=1024)
        first = _greedy(engine)
        llm = studio.models.get_loaded(engine.key)
        assert llm.decoder._graphs
        studio.models._evict_one(engine.key, "test")
        assert studio.models.stats(engine.key)["state"] == "warm", quant
        assert llm.decoder.k_cache == [] and not llm.decoder._graphs
        assert llm.model.model.embed_tokens.weight.device.type == "cpu"
        assert _greedy(engine) == first, quant
        assert studio.models.stats(engine.key)["restores"] == 1
        assert llm.decoder._graphs  # captured anew on the restored weights
        studio.models.evict_all()


def test_int4_from_a_4bit_nf4_checkpoint(tiny_folder, tmp_path):
    """A base that exists only in 4-bit: loaded as NF4, dequantized, re-quantized to int4."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from studio.llm import ModelSource
    from studio.llm.engine import load_llm
    from studio.llm.int4 import int4_layers

    folder, model = tiny_folder
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                           bnb_4bit_compute_dtype=torch.bfloat16)
    nf4 = AutoModelForCausalLM.from_pretrained(folder, quantization_config=q,
                                               device_map={"": 0})
    nf4.save_pretrained(tmp_path / "nf4")
    AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path / "nf4")
    ids = torch.randint(0, nf4.config.vocab_size, (1, 64),
                        generator=torch.Generator().manual_seed(2)).cuda()
    with torch.inference_mode():
        ref = nf4(ids).logits.float()
        bf16 = model.to("cuda", torch.bfloat16)(ids).logits.float()
    llm = load_llm(ModelSource(str(tmp_path / "nf4"), "int4"), "cuda", 512)
    assert len(int4_layers(llm.model)) == 2 * 4
    assert not any(type(m).__name__ == "Linear4bit" for m in llm.model.modules())
    with torch.inference_mode():
        got = llm.model(ids).logits.float()
    # re-quantizing NF4 values onto the int4 grid costs no more than NF4 itself cost
    assert (got - ref).abs().mean() < 1.5 * (ref - bf16).abs().mean()
    assert (got - ref).abs().mean() > 0  # it really is a different format


def test_triton_decode_attention_equals_matmul_attention():
    """The split-K kernel over the static cache = softmax(q K^T) V over keys 0..pos, for GQA,
    at positions inside and at the edges of its 128-key splits, up to an 8k cache."""
    from studio.llm.attention import decode_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    n_kv, n_rep, hd, length = 8, 4, 128, 8192
    q = torch.randn(1, n_kv, n_rep, hd, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, n_kv, length, hd, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, n_kv, length, hd, device="cuda", dtype=torch.bfloat16, generator=g)
    for p in (0, 1, 127, 128, 255, 700, 4095, 8191):
        pos = torch.tensor([p], device="cuda")
        attend = min(length, -(-(p + 1) // 256) * 256)
        got = decode_attention(q, k, v, pos, attend).float()
        s = q[0].float() @ k[0, :, :p + 1].float().transpose(-1, -2) * hd ** -0.5
        ref = torch.softmax(s, -1) @ v[0, :, :p + 1].float()
        assert (got[0] - ref).abs().max() < 2e-2, p


@pytest.mark.parametrize("split", [None, 64, 256])
def test_fused_decode_attention_does_rope_cache_write_and_attention(split):
    """The fused call = RoPE(q), RoPE(k) written at pos, v written at pos, softmax(q K^T) V,
    for GQA (4 query heads per KV head), across split edges, up to an 8k cache."""
    from studio.llm.attention import fused_decode_attention

    g = torch.Generator(device="cuda").manual_seed(1)
    n_kv, n_rep, hd, length = 8, 4, 128, 8192
    kw = dict(device="cuda", dtype=torch.bfloat16, generator=g)
    k_cache = torch.randn(1, n_kv, length, hd, **kw)
    v_cache = torch.randn(1, n_kv, length, hd, **kw)
    for p in (0, 63, 64, 255, 1000, 4096, 8191):
        q = torch.randn(1, 1, n_kv * n_rep * hd, **kw)
        k, v = torch.randn(1, 1, n_kv * hd, **kw), torch.randn(1, 1, n_kv * hd, **kw)
        ang = torch.rand(hd, device="cuda", generator=g) * 6
        cos, sin = ang.cos(), ang.sin()
        sin_s = torch.cat((-sin[:hd // 2], sin[hd // 2:]))
        pos = torch.tensor([p], device="cuda")
        attend = min(length, -(-(p + 1) // 256) * 256)
        before = k_cache.clone()
        got = fused_decode_attention(q, k, v, cos.bfloat16()[None, None, None],
                                     sin_s.bfloat16()[None, None, None], k_cache, v_cache,
                                     pos, attend, split=split).float()

        c, sn = cos.bfloat16().float(), sin_s.bfloat16().float()

        def rope(x, c=c, sn=sn):
            x = x.float()
            return x * c + x.roll(hd // 2, -1) * sn

        kr = rope(k.view(n_kv, hd))
        assert (k_cache[0, :, p].float() - kr).abs().max() < 2e-2, p
        assert torch.equal(v_cache[0, :, p], v.view(n_kv, hd)), p
        assert torch.equal(k_cache[0, :, :p], before[0, :, :p])  # nothing else written
        qr = rope(q.view(n_kv, n_rep, hd))
        s = qr @ k_cache[0, :, :p + 1].float().transpose(-1, -2) * hd ** -0.5
        ref = torch.softmax(s, -1) @ v_cache[0, :, :p + 1].float()
        assert (got[0] - ref).abs().max() < 3e-2, p


def test_int8_head_kernel_on_cuda():
    """The int8 LM head's batch-1 Triton kernel = x @ dequantized(w).T; prefill rows go
    through PyTorch's int8 kernel with the same result."""
    from studio.llm.int4 import Int8Linear

    g = torch.Generator(device="cuda").manual_seed(2)
    w = torch.randn(50000, 512, device="cuda", generator=g) * 0.05
    lin = Int8Linear.from_weight(w, None, "cuda")
    x = torch.randn(1, 1, 512, device="cuda", dtype=torch.bfloat16, generator=g)
    ref = x.float() @ lin.dequantized().t()
    with torch.inference_mode():
        one = lin(x).float()
        many = lin(x.expand(1, 3, 512)).float()
    scale = ref.abs().max()
    assert (one - ref).abs().max() < 1e-2 * scale
    assert (many[:, 1:2] - ref).abs().max() < 1e-2 * scale


def test_int4_layer_on_cuda_computes_with_its_dequantized_weight():
    """tinygemm with the engine's CUDA layout (inner k-tiles 4) = the dequantized weight."""
    from studio.llm import int4

    g = torch.Generator(device="cuda").manual_seed(3)
    w = torch.randn(512, 1024, device="cuda", generator=g) * 0.05
    lin = int4.Int4Linear.from_weight(w, None, "cuda", 64)
    q, s, z = int4.quantize(w, 64)
    x = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16, generator=g)
    ref = x.float() @ int4.dequantize(q, s, z, 64).t()
    assert (lin(x).float() - ref).abs().max() < 2e-2 * ref.abs().max()


def test_graph_captures_share_one_side_stream(tiny_folder):
    """Capturing a graph per bucket on a cuBLAS route (bf16 layers, matmul attention) does not
    grow the allocated memory by a cuBLAS workspace (32 MiB on Hopper) per capture."""
    from studio.llm.fast import StaticDecoder

    _, model = tiny_folder
    model = model.to("cuda", torch.bfloat16)
    dec = StaticDecoder(model, 2048, use_cuda_graphs=True)
    dec.decode_attention = "matmul"
    vocab = model.config.vocab_size
    ids = [5 + j % (vocab - 10) for j in range(2000)]
    dec.prefill(ids[:200])
    dec.step(7)  # the first capture (and the stream's workspace)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for n in range(6):  # six more buckets, six more captures
        dec.forget_prefix()
        dec.prefill(ids[:200 + 256 * (n + 1)])
        dec.step(7)
    torch.cuda.synchronize()
    assert len(dec._graphs) == 7
    assert torch.cuda.memory_allocated() - before < 24 * 2**20
