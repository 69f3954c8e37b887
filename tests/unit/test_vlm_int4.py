"""The Vision tab's "Load as: int4": the language model in the chat engine's int4 format
(`studio.llm.int4`), here on the CPU kernel; on the GPU bench/vlm.py --quant nf4,int4 measures it."""

from __future__ import annotations

from PIL import Image

from studio.config import Settings
from studio.context import build_studio
from studio.llm.base import GenerationSettings
from studio.llm.int4 import int4_layers
from tabs.vlm.engine import VLMEngine, VLMSource
from tabs.vlm.service import QUANTIZATIONS
from tabs.vlm.tiny import make_tiny_vlm


def test_int4_vlm_loads_in_the_int4_format_and_answers(tmp_path):
    assert "int4" in QUANTIZATIONS  # offered in the tab's "Load as"
    studio = build_studio(Settings(home=tmp_path / "h"), start_jobs=False)
    folder = make_tiny_vlm(tmp_path / "m", "llava", seed=1)
    engine = VLMEngine(studio, VLMSource(str(folder), "int4"))
    msgs = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (64, 64))},
                                         {"type": "text", "text": "what is this"}]}]
    done = [e for e in engine.stream_chat(msgs, GenerationSettings(temperature=0,
                                                                   max_new_tokens=6))
            if e.kind == "done"][0]
    assert done.stats.new_tokens >= 1
    with studio.models.use(engine.key) as llm:
        assert llm.quantization == "int4"
        assert int4_layers(llm.model.model.language_model)  # the decoder's layers are int4
    studio.close()
