"""The small profile's real chat model: SmolLM2-135M-Instruct from its single GGUF file."""

from __future__ import annotations

import pytest

from studio.llm import GenerationSettings, LLMEngine, NoToolTemplate


@pytest.mark.slow
def test_smollm2_gguf_answers_through_the_profile(studio):
    choice = studio.choices["chat"]
    if choice.source is None:
        pytest.skip(choice.note)
    engine = LLMEngine.from_choice(studio, choice)
    result = engine.chat([{"role": "user", "content": "What is the capital of France?"}],
                         GenerationSettings(temperature=0, max_new_tokens=24))
    assert "Paris" in result.text
    assert result.stats.new_tokens > 1
    llm = studio.models.get_loaded(engine.key)
    assert llm.quantization == "gguf" and llm.decoder is not None  # Llama layout: fast path
    assert studio.models.stats(engine.key)["size"] > 100 * 1024**2  # measured, dequantized

    def add(a: int, b: int) -> int:
        """Add two numbers.

        Args:
            a: first
            b: second
        """
        return a + b

    with pytest.raises(NoToolTemplate, match="no tool template"):
        engine.chat([{"role": "user", "content": "2+2?"}], tools=[add])
