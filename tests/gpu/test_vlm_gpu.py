"""The VLM engine's CUDA paths on a tiny Qwen2-VL: the CUDA-graph decode after an embedded
(picture) prefill follows the model's own forward, and an NF4 turn streams through the
manager with graphs captured."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_graph_decode_after_a_picture_prefill_follows_the_model(studio, tmp_path):
    import numpy as np
    from PIL import Image

    from studio.llm import GenerationSettings
    from studio.llm.fast import StaticDecoder
    from tabs.vlm.engine import VLMEngine, VLMSource, embed_prompt, process
    from tabs.vlm.tiny import make_tiny_vlm, tiny_vlm

    model, proc = tiny_vlm("qwen2-vl", hidden=256, seed=0)
    model = model.to("cuda", torch.bfloat16)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), np.uint8))
    msgs = [{"role": "user", "content": [{"type": "image", "image": img},
                                         {"type": "text", "text": "Describe the image."}]}]

    class _L:  # what `process` needs of a loaded model
        processor = proc

    inputs = {k: v.cuda() for k, v in process(_L, msgs)[0].items()}
    ids = inputs["input_ids"][0].tolist()
    with torch.inference_mode():
        ref = model.generate(**inputs, max_new_tokens=40, do_sample=False, eos_token_id=None,
                             output_logits=True, return_dict_in_generate=True)
    dec = StaticDecoder(model, 1024, use_cuda_graphs=True)
    logits = dec.prefill(ids, inputs=embed_prompt(model, inputs))
    gen = ref.sequences[0, len(ids):].tolist()
    scale = ref.logits[0].abs().max()
    for i, tok in enumerate(gen):  # teacher-forced on generate()'s tokens: same logits
        assert (logits[0] - ref.logits[i][0].float()).abs().max() < 0.05 * scale + 0.05, i
        logits = dec.step(tok)
    assert dec._graphs  # the decode steps ran as CUDA graphs

    folder = make_tiny_vlm(tmp_path / "m", "qwen2-vl", seed=1)
    engine = VLMEngine(studio, VLMSource(str(folder), "nf4"))
    done = [e for e in engine.stream_chat(msgs, GenerationSettings(temperature=0,
                                                                   max_new_tokens=24))
            if e.kind == "done"][0]
    assert done.stats.new_tokens >= 1 and done.stats.peak_vram is not None
    llm = studio.models.get_loaded(engine.key)
    assert llm.quantization == "nf4" and llm.decoder.use_cuda_graphs
