"""Tool calling in the model's own template format.

The caller passes plain typed Python functions with Google-style docstrings; transformers turns
them into JSON schemas (`get_json_schema`), the chat template renders them, and this module reads
the model's reply back into `ToolCall`s, runs them, and formats the results as ``tool``
messages. Two formats are understood, the ones the studio's 8B models were trained on:

- Qwen2.5 (and other Hermes-style templates):
  ``<tool_call>{"name": .., "arguments": ..}</tool_call>``
- Llama-3.1: the whole reply is ``{"name": .., "parameters": ..}`` (optionally after
  ``<|python_tag|>``).

A template that never mentions ``tools`` cannot call tools: `NoToolTemplate` says so plainly.
"""

from __future__ import annotations

import inspect
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

QWEN = "qwen"
LLAMA = "llama"

_QWEN_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*(?:</tool_call>|$)", re.DOTALL)
_QWEN_OPEN = "<tool_call>"
_PY_TAG = "<|python_tag|>"


class NoToolTemplate(ValueError):
    """The model's chat template has no tool format, so tools cannot be offered to it."""


@dataclass
class ToolCall:
    """One call the model asked for, and what running it gave (shown in the UI)."""

    name: str
    arguments: dict[str, Any]
    id: str = ""
    result: str | None = None
    error: str | None = None

    def to_message(self) -> dict[str, Any]:
        """The OpenAI-style entry for an assistant message's ``tool_calls``."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:12]


def tool_schemas(tools: Sequence[Callable | dict]) -> list[dict]:
    """JSON schemas for functions (via transformers) or ready-made schema dicts."""
    from transformers.utils import get_json_schema

    out = []
    for t in tools:
        if isinstance(t, dict):
            out.append(t)
        elif callable(t):
            try:
                out.append(get_json_schema(t))
            except Exception as exc:
                raise ValueError(
                    f"tool {getattr(t, '__name__', t)!r} needs type hints and a Google-style "
                    f"docstring with an Args section: {exc}"
                ) from exc
        else:
            raise TypeError(f"not a tool: {t!r}")
    return out


def tool_style(chat_template: str | None) -> str | None:
    """Which tool format a chat template uses, or None when it has none."""
    if not chat_template or "tools" not in chat_template:
        return None
    if "<tool_call>" in chat_template:
        return QWEN
    return LLAMA


def require_tool_style(chat_template: str | None, model_name: str) -> str:
    style = tool_style(chat_template)
    if style is None:
        raise NoToolTemplate(
            f"{model_name} has no tool template: its chat template does not render tools, so it "
            "cannot call functions. Use a tool-trained model such as Llama-3.1-8B-Instruct or "
            "Qwen2.5-7B-Instruct, or chat without tools."
        )
    return style


def _as_call(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models emit the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(name=obj["name"], arguments=args, id=new_call_id())


def parse_tool_calls(text: str, style: str | None) -> tuple[str, list[ToolCall]]:
    """Split a finished reply into (plain text, tool calls). No calls: (text, [])."""
    if style == QWEN:
        calls = []
        for m in _QWEN_CALL.finditer(text):
            try:
                call = _as_call(json.loads(m.group(1)))
            except json.JSONDecodeError:
                call = None
            if call is not None:
                calls.append(call)
        if calls:
            return text[:text.index(_QWEN_OPEN)].strip(), calls
        return text, []
    if style == LLAMA:
        body = text.strip()
        if body.startswith(_PY_TAG):
            body = body[len(_PY_TAG):].strip()
        if not body.startswith("{"):
            return text, []
        calls = []
        for part in body.split(";"):  # Llama may separate several calls with ';'
            try:
                call = _as_call(json.loads(part))
            except json.JSONDecodeError:
                return text, []
            if call is None:
                return text, []
            calls.append(call)
        return "", calls
    return text, []


def visible_text(text: str, style: str | None) -> str:
    """The part of a reply still being generated that is safe to show (no raw call JSON)."""
    if style == QWEN:
        cut = text.find(_QWEN_OPEN)
        if cut >= 0:
            return text[:cut]
        for n in range(len(_QWEN_OPEN) - 1, 0, -1):  # hold back a half-written "<tool_call>"
            if text.endswith(_QWEN_OPEN[:n]):
                return text[:-n]
        return text
    if style == LLAMA:
        body = text.lstrip()
        if not body or body.startswith("{") or body.startswith(_PY_TAG) or \
                _PY_TAG.startswith(body):
            return ""
        return text
    return text


class ToolBox:
    """The functions a chat may call, by name; runs calls and reports errors to the model."""

    def __init__(self, tools: Sequence[Callable | dict]):
        self.functions = {t.__name__: t for t in tools if callable(t)}
        self.schemas = tool_schemas(tools)

    def run(self, call: ToolCall) -> ToolCall:
        fn = self.functions.get(call.name)
        if fn is None:
            call.error = f"unknown tool {call.name!r}; available: {', '.join(self.functions)}"
        else:
            try:
                inspect.signature(fn).bind(**call.arguments)
                value = fn(**call.arguments)
                call.result = value if isinstance(value, str) else json.dumps(value, default=str)
            except TypeError as exc:
                call.error = f"bad arguments for {call.name}: {exc}"
            except Exception as exc:  # the model sees the error and may retry or explain
                call.error = f"{type(exc).__name__}: {exc}"
        return call

    @staticmethod
    def result_message(call: ToolCall) -> dict[str, Any]:
        content = call.result if call.error is None else json.dumps({"error": call.error})
        return {"role": "tool", "name": call.name, "tool_call_id": call.id, "content": content}
