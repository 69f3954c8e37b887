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
