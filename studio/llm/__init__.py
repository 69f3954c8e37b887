"""The studio's one chat engine, shared by every tab (Chat, RAG, QLoRA, Whisper post-edit, VLM).

Use it like this::

    from studio.llm import LLMEngine, GenerationSettings

    engine = LLMEngine.from_choice(studio, studio.choices["chat"])  # local, via the manager
    for ev in engine.stream_chat(messages, GenerationSettings(temperature=0.2),
                                 tools=[get_weather], stop_event=stop):
        if ev.kind == "text": print(ev.text, end="")          # a streamed delta
        elif ev.kind == "tool_call": show(ev.tool_call)       # name, arguments, result/error
        elif ev.kind == "notice": warn(ev.text)                # e.g. history was trimmed
        elif ev.kind == "done": stats = ev.stats               # tokens/s, TTFT, peak VRAM
    reply = engine.chat(messages).text                         # blocking

- ``messages`` are OpenAI-style dicts (``role``/``content``; ``tool_calls``/``tool`` for tools).
- Local models: `TransformersEngine(studio, ModelSource(hub_id_or_path, quantization,
  gguf_file))`, loaded lazily through ``studio.models`` (measured, pinned while streaming,
  evicted LRU). ``engine.attach_adapter(path)`` / ``detach_adapter()`` swap a PEFT adapter
  without reloading the base.
- Any OpenAI-compatible server (Ollama, llama.cpp, vLLM, `studio.llm.server`):
  `OpenAIEngine(base_url, model)`, same interface, streaming and tools.
- ``tools`` are typed Python functions with Google-style docstrings; the engine renders them
  with the model's template, runs each call and feeds the result back. A model whose template
  has no tool format raises `NoToolTemplate`.
- Stop: set ``stop_event``; generation ends on the device within a token.

Nothing here loads a model or touches the GPU on import.
"""

from studio.llm.base import (
    ChatEvent,
    ChatResult,
    GenerationSettings,
    LLMEngine,
    LLMError,
    TurnStats,
)
from studio.llm.engine import ModelLoadError, ModelSource, TransformersEngine
from studio.llm.openai_backend import OpenAIEngine
from studio.llm.tools import NoToolTemplate, ToolCall

__all__ = [
    "ChatEvent",
    "ChatResult",
    "GenerationSettings",
    "LLMEngine",
    "LLMError",
    "ModelLoadError",
    "ModelSource",
    "NoToolTemplate",
    "OpenAIEngine",
    "ToolCall",
    "TransformersEngine",
    "TurnStats",
]
