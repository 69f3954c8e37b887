"""The engine interface every backend implements, and the tool-call loop they share.

A backend only has to produce one assistant turn (`LLMEngine.stream_turn`): stream text deltas,
then report the full text, any tool calls and timing. `stream_chat` runs the call/response loop
on top: run each requested tool, append the results as ``tool`` messages, ask again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from studio.llm.tools import ToolBox, ToolCall


class LLMError(RuntimeError):
    """A chat could not run (bad model path, unsupported file, server unreachable...)."""


@dataclass
class GenerationSettings:
    """Sampling settings. temperature 0 means greedy (deterministic)."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0
    seed: int | None = None

    def validate(self) -> GenerationSettings:
        if self.max_new_tokens < 1:
            raise ValueError("max new tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature cannot be negative")
        if not 0 < self.top_p <= 1:
            raise ValueError("top-p must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition penalty must be positive")
        return self


@dataclass
class TurnStats:
    """How one assistant turn went: shown as tokens/s and VRAM in the Chat tab."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0  # request start to first token
    decode_tokens_per_s: float = 0.0  # after the first token
    total_s: float = 0.0
    peak_vram: int | None = None  # bytes, CUDA only
    stopped: bool = False  # Stop was pressed
    trimmed_messages: int = 0  # dropped by the context guard
    finish_reason: str = "stop"  # stop | length | tool_calls | cancelled


@dataclass
class ChatEvent:
    """One streamed event: ``text`` (a delta), ``notice``, ``tool_call`` (with its result),
    ``done`` (final text, stats, and the conversation including tool messages)."""

    kind: str
    text: str = ""
    tool_call: ToolCall | None = None
    stats: TurnStats | None = None
    messages: list[dict[str, Any]] | None = None
    # on the ``turn`` event of stream_turn only:
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass
class ChatResult:
    """What the blocking `LLMEngine.chat` returns."""

    text: str
    tool_calls: list[ToolCall]
    notices: list[str]
    stats: TurnStats
    messages: list[dict[str, Any]]


class LLMEngine:
    """A chat model behind one interface (local transformers model or OpenAI-style server).

    Build one with `LLMEngine.from_choice(studio, choice)` (local, through the model manager) or
    `studio.llm.OpenAIEngine(base_url, model)`.
    """

    name: str = "llm"
    max_tool_rounds: int = 5

    @staticmethod
    def from_choice(studio, choice, **kwargs) -> LLMEngine:
        from studio.llm.engine import TransformersEngine

        return TransformersEngine.from_choice(studio, choice, **kwargs)

    # ----- what a backend implements -------------------------------------------------------
    def stream_turn(self, messages: list[dict], settings: GenerationSettings,
                     tool_schemas: list[dict] | None,
                     stop_event: threading.Event | None) -> Iterator[ChatEvent]:
        """One assistant turn, tools not run: ``text``/``notice`` events, then one ``turn``
        event with the full text, the tool calls asked for, and stats. Servers use this."""
        raise NotImplementedError

    def check_tools(self) -> None:
        """Raise `NoToolTemplate` when this model cannot call tools."""

    # ----- shared ---------------------------------------------------------------------------
    def stream_chat(self, messages: Sequence[dict], settings: GenerationSettings | None = None,
                    tools: Sequence[Callable | dict] | None = None,
                    stop_event: threading.Event | None = None) -> Iterator[ChatEvent]:
        """Stream a reply to `messages` (OpenAI-style dicts), running tool calls if `tools`."""
        settings = (settings or GenerationSettings()).validate()
        convo = [dict(m) for m in messages]
        if not convo:
            raise ValueError("no messages to answer")
        box = ToolBox(tools) if tools else None
        if box is not None:
            self.check_tools()
        for _round in range(self.max_tool_rounds + 1):
            turn = None
            for ev in self.stream_turn(convo, settings, box.schemas if box else None,
                                        stop_event):
                if ev.kind == "turn":
                    turn = ev
                else:
                    yield ev
            assert turn is not None and turn.stats is not None
            if not turn.tool_calls or box is None or turn.stats.stopped:
                convo.append({"role": "assistant", "content": turn.text})
                yield ChatEvent("done", text=turn.text, stats=turn.stats, messages=convo)
                return
            convo.append({"role": "assistant", "content": turn.text,
                          "tool_calls": [c.to_message() for c in turn.tool_calls]})
            for call in turn.tool_calls:
                box.run(call)
                yield ChatEvent("tool_call", tool_call=call)
                convo.append(box.result_message(call))
        note = f"stopped after {self.max_tool_rounds} rounds of tool calls"
        yield ChatEvent("notice", text=note)
        yield ChatEvent("done", text="", stats=turn.stats, messages=convo)

    def chat(self, messages: Sequence[dict], settings: GenerationSettings | None = None,
             tools: Sequence[Callable | dict] | None = None,
             stop_event: threading.Event | None = None) -> ChatResult:
        """Blocking version of `stream_chat` (for RAG, post-editing, scripts)."""
        calls, notices = [], []
        done = None
        for ev in self.stream_chat(messages, settings, tools, stop_event):
            if ev.kind == "tool_call":
                calls.append(ev.tool_call)
            elif ev.kind == "notice":
                notices.append(ev.text)
            elif ev.kind == "done":
                done = ev
        assert done is not None
        return ChatResult(text=done.text, tool_calls=calls, notices=notices, stats=done.stats,
                          messages=done.messages or [])
