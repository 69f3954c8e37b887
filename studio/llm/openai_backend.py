"""The second backend: any OpenAI-compatible chat server (Ollama, llama.cpp, vLLM, ours).

Same interface as the local engine (`LLMEngine`): streamed text, tool calls (the server parses
them; the shared loop in `LLMEngine.stream_chat` runs the Python functions), Stop (closing the
HTTP stream makes the server stop generating).
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from studio.llm.base import ChatEvent, LLMEngine, LLMError, TurnStats
from studio.llm.tools import ToolCall, new_call_id


def to_openai_messages(messages: list[dict]) -> list[dict[str, Any]]:
    """Our messages keep tool arguments as dicts; the wire format wants JSON strings."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [
                {**c, "function": {**c["function"],
                                   "arguments": c["function"]["arguments"]
                                   if isinstance(c["function"]["arguments"], str)
                                   else json.dumps(c["function"]["arguments"])}}
                for c in m["tool_calls"]
            ]
        if m.get("content") is None:
            m["content"] = ""
        out.append(m)
    return out


class OpenAIEngine(LLMEngine):
    """Chat through ``POST {base_url}/chat/completions`` with ``stream: true``."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 timeout: float = 300.0):
        base_url = base_url.strip().rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"not a server URL: {base_url!r} (e.g. http://127.0.0.1:11434/v1)")
        if not model.strip():
            raise ValueError("give the model name the server knows (e.g. llama3.1:8b)")
        self.base_url = base_url
        self.model = model.strip()
        self.name = f"{self.model} @ {base_url}"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout

    def list_models(self) -> list[str]:
        """Model names the server offers (GET /models)."""
        try:
            r = httpx.get(f"{self.base_url}/models", headers=self.headers, timeout=10)
            r.raise_for_status()
        except httpx.HTTPError as exc:
            raise LLMError(f"Cannot list models at {self.base_url}: {exc}") from exc
        return [m["id"] for m in r.json().get("data", [])]

    def _payload(self, messages, settings, tool_schemas) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai_messages(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
        }
        if settings.seed is not None:
            body["seed"] = settings.seed
        if settings.top_k:
            body["top_k"] = settings.top_k  # llama.cpp, vLLM and ours accept it
        if settings.repetition_penalty != 1.0:
            body["repetition_penalty"] = settings.repetition_penalty
        if tool_schemas:
            body["tools"] = tool_schemas
        return body

    def stream_turn(self, messages, settings, tool_schemas, stop_event):
        t0 = time.perf_counter()
        stats = TurnStats()
        text, chunks, t_first = "", 0, None
        partial: dict[int, dict[str, str]] = {}
        finish = "stop"
        url = f"{self.base_url}/chat/completions"
        try:
            with httpx.Client(timeout=self.timeout) as client, client.stream(
                    "POST", url, json=self._payload(messages, settings, tool_schemas),
                    headers=self.headers) as r:
                if r.status_code != 200:
                    r.read()
                    raise LLMError(f"{self.base_url} answered {r.status_code}: "
                                   f"{_error_text(r)}")
                for line in r.iter_lines():
                    if stop_event is not None and stop_event.is_set():
                        stats.stopped, finish = True, "cancelled"
                        break  # leaving the block closes the stream; the server stops
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if chunk.get("usage"):
                        stats.prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
                        stats.new_tokens = chunk["usage"].get("completion_tokens", 0)
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            t_first = t_first or time.perf_counter()
                            chunks += 1
                            text += delta["content"]
                            yield ChatEvent("text", text=delta["content"])
                        for tc in delta.get("tool_calls") or []:
                            t_first = t_first or time.perf_counter()
                            slot = partial.setdefault(tc.get("index", 0),
                                                      {"id": "", "name": "", "arguments": ""})
                            fn = tc.get("function") or {}
                            slot["id"] = tc.get("id") or slot["id"]
                            slot["name"] += fn.get("name") or ""
                            slot["arguments"] += fn.get("arguments") or ""
                        finish = choice.get("finish_reason") or finish
        except httpx.ConnectError as exc:
            raise LLMError(f"Cannot reach {self.base_url}: is the server running? ({exc})") \
                from exc
        except httpx.HTTPError as exc:
            raise LLMError(f"Chat request to {self.base_url} failed: {exc}") from exc
        calls = [_to_call(p) for _, p in sorted(partial.items())]
        t_end = time.perf_counter()
        stats.new_tokens = stats.new_tokens or chunks
        stats.finish_reason = finish
        stats.total_s = t_end - t0
        stats.ttft_s = (t_first or t_end) - t0
        if t_first and stats.new_tokens > 1:
            stats.decode_tokens_per_s = (stats.new_tokens - 1) / max(t_end - t_first, 1e-9)
        yield ChatEvent("turn", text=text, tool_calls=calls, stats=stats)


def _to_call(p: dict[str, str]) -> ToolCall:
    try:
        args = json.loads(p["arguments"] or "{}")
    except json.JSONDecodeError as exc:
        raise LLMError(f"server sent tool call arguments that are not JSON: {exc}") from exc
    return ToolCall(name=p["name"], arguments=args, id=p["id"] or new_call_id())


def _error_text(r: httpx.Response) -> str:
    try:
        body = r.json()
        err = body.get("error", body)
        return err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except Exception:
        return r.text[:500]
