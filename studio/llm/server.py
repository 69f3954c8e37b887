"""An OpenAI-compatible ``/v1/chat/completions`` server for any `LLMEngine`.

Lets other programs (editors, agents, `OpenAIEngine`) use the studio's fast local engine:

    python -m studio.llm.server --model /path/to/model-or.gguf --port 8000 [--api-key KEY]

Streaming (SSE) and tools follow the OpenAI wire format: tool calls come back as ``tool_calls``
with ``finish_reason: "tool_calls"``; the client runs them. A client that disconnects stops the
generation on the device within a token.
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time
import uuid
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from studio.llm.base import GenerationSettings, LLMEngine, LLMError
from studio.llm.tools import NoToolTemplate

_END = object()


def _messages_from_request(raw: list[dict]) -> list[dict]:
    """Wire messages -> engine messages (text parts joined, tool arguments parsed)."""
    out = []
    for m in raw:
        m = dict(m)
        content = m.get("content")
        if isinstance(content, list):
            m["content"] = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        elif content is None:
            m["content"] = ""
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                fn = dict(c.get("function") or {})
                if isinstance(fn.get("arguments"), str):
                    fn["arguments"] = json.loads(fn["arguments"] or "{}")
                calls.append({**c, "function": fn})
            m["tool_calls"] = calls
        out.append(m)
    return out


def settings_from_request(body: dict) -> GenerationSettings:
    max_new = body.get("max_completion_tokens") or body.get("max_tokens") or 512
    return GenerationSettings(
        max_new_tokens=int(max_new),
        temperature=float(body.get("temperature", 0.7)),
        top_p=float(body.get("top_p", 1.0)),
        top_k=int(body.get("top_k", 0) or 0),
        repetition_penalty=float(body.get("repetition_penalty", 1.0)),
        seed=body.get("seed"),
    ).validate()


def _wire_calls(calls) -> list[dict[str, Any]]:
    return [{"index": i, "id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for i, c in enumerate(calls)]


def create_app(engine: LLMEngine, model_name: str, api_key: str | None = None):
    """A FastAPI app serving `engine` under the name `model_name`. With `api_key`, every
    request must carry ``Authorization: Bearer <key>`` (as OpenAI clients send it) and no
    route describes the API to anyone without it."""
    locked = {"openapi_url": None, "docs_url": None, "redoc_url": None} if api_key else {}
    app = FastAPI(title="OneGPU Studio OpenAI-compatible server", **locked)

    if api_key:
        import hmac

        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def require_key(request: Request, call_next):
            got = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(got, expected):
                return JSONResponse({"error": {"message": "missing or wrong API key (send "
                                                          "Authorization: Bearer <key>)",
                                               "type": "invalid_api_key"}}, status_code=401)
            return await call_next(request)

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "owned_by": "onegpu-studio"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await request.json()
        try:
            messages = _messages_from_request(body.get("messages") or [])
            if not messages:
                raise ValueError("messages is empty")
            settings = settings_from_request(body)
            tools = body.get("tools") or None
            if tools:
                await anyio.to_thread.run_sync(engine.check_tools)
        except NoToolTemplate as exc:
            return error(400, str(exc))
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            return error(400, f"bad request: {exc}")
        rid = "chatcmpl-" + uuid.uuid4().hex[:16]
        created = int(time.time())
        stop = threading.Event()
        events: queue.Queue = queue.Queue()

        def produce() -> None:
            try:
                for ev in engine.stream_turn(messages, settings, tools, stop):
                    events.put(ev)  # the engine itself ends within a token once stop is set
            except BaseException as exc:  # handed to the response
                events.put(exc)
            finally:
                events.put(_END)

        threading.Thread(target=produce, daemon=True).start()

        def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
            obj = {"id": rid, "object": "chat.completion.chunk", "created": created,
                   "model": model_name,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage is not None:
                obj["choices"], obj["usage"] = [], usage
            return f"data: {json.dumps(obj)}\n\n"

        if not body.get("stream"):
            text, calls, stats = "", [], None
            while (ev := await anyio.to_thread.run_sync(events.get)) is not _END:
                if isinstance(ev, BaseException):
                    return error(500, str(ev), "server_error")
                if ev.kind == "turn":
                    text, calls, stats = ev.text, ev.tool_calls, ev.stats
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                msg["tool_calls"] = [{k: v for k, v in c.items() if k != "index"}
                                     for c in _wire_calls(calls)]
            return {"id": rid, "object": "chat.completion", "created": created,
                    "model": model_name,
                    "choices": [{"index": 0, "message": msg,
                                 "finish_reason": stats.finish_reason if stats else "stop"}],
                    "usage": _usage(stats)}

        async def stream():
            try:
                yield chunk({"role": "assistant", "content": ""})
                while (ev := await anyio.to_thread.run_sync(events.get)) is not _END:
                    if isinstance(ev, BaseException):
                        yield f"data: {json.dumps({'error': {'message': str(ev)}})}\n\n"
                        break
                    if ev.kind == "text":
                        yield chunk({"content": ev.text})
                    elif ev.kind == "turn":
                        if ev.tool_calls:
                            yield chunk({"tool_calls": _wire_calls(ev.tool_calls)})
                        yield chunk({}, ev.stats.finish_reason
                                    if ev.stats.finish_reason != "cancelled" else "stop")
                        if (body.get("stream_options") or {}).get("include_usage"):
                            yield chunk({}, usage=_usage(ev.stats))
                yield "data: [DONE]\n\n"
            finally:
                stop.set()  # a client that went away stops the generation

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


def _usage(stats) -> dict[str, int]:
    if stats is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.new_tokens,
            "total_tokens": stats.prompt_tokens + stats.new_tokens}


class ServerThread:
    """Run an app with uvicorn in a background thread (tests, the Chat tab's "serve")."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port,
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.host = host

    def start(self, timeout: float = 20.0) -> str:
        """Start and return the base URL (``http://host:port/v1``)."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise LLMError("the OpenAI-compatible server did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def main(argv: list[str] | None = None) -> None:
    """Serve one local model: ``python -m studio.llm.server --model PATH_OR_HUB_ID``."""
    import uvicorn

    from studio.config import Settings
    from studio.context import build_studio
    from studio.llm.engine import ModelSource, TransformersEngine

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="hub id, model folder or .gguf file")
    p.add_argument("--quantization", default="auto",
                   choices=["auto", "nf4", "bf16", "fp16", "fp32", "gguf"])
    p.add_argument("--name", default=None, help="model name clients use")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--context", type=int, default=8192)
    p.add_argument("--home", default="studio_home")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $STUDIO_API_KEY; one is "
                   "generated and printed when --host is reachable from other machines)")
    a = p.parse_args(argv)
    import os
    import secrets
    from pathlib import Path

    from studio.security import is_loopback

    api_key = a.api_key or os.environ.get("STUDIO_API_KEY") or None
    if api_key is None and not is_loopback(a.host):
        api_key = secrets.token_urlsafe(24)
        print(f"--host {a.host} is reachable from other machines and no --api-key was given, "
              f"so one was generated:\n  {api_key}", flush=True)

    studio = build_studio(Settings(home=Path(a.home)), start_jobs=False)
    engine = TransformersEngine(studio, ModelSource(a.model, a.quantization),
                                max_context=a.context)
    uvicorn.run(create_app(engine, a.name or Path(a.model).name, api_key=api_key), host=a.host,
                port=a.port)


if __name__ == "__main__":
    main()
