"""Chat tab logic (no Gradio): which engine a request uses, the streamed reply as chatbot
messages (Stop: a flag from `studio.stops`, per browser session), and two small demo tools."""

from __future__ import annotations

import ast
import datetime as dt
import operator
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from studio import hub
from studio.config import format_bytes
from studio.jobs import ALL
from studio.llm import GenerationSettings, LLMEngine, ModelSource, OpenAIEngine, TurnStats
from studio.llm.engine import TransformersEngine

PROFILE, PATH, SERVER = "profile", "path", "server"
QUANTIZATIONS = ["auto", "int4", "nf4", "bf16", "fp16", "fp32"]


@dataclass
class ChatConfig:
    """Everything the Chat tab's widgets choose, as one typed object."""

    source: str = PROFILE  # profile | path | server
    path: str = ""  # hub id, model folder or .gguf file (source=path)
    quantization: str = "auto"
    server_url: str = "http://127.0.0.1:11434/v1"  # Ollama's default
    server_model: str = ""
    api_key: str = ""
    system_prompt: str = "You are a helpful assistant."
    use_tools: bool = False
    settings: GenerationSettings = field(default_factory=GenerationSettings)


def engine_for(studio: Any, cfg: ChatConfig, owner: Any = ALL) -> LLMEngine:
    """The engine a config asks for; local engines share the model manager's one copy. A path
    inside another owner's run or export (an adapter of theirs) is answered as a missing one."""
    if cfg.source == PROFILE:
        # a hub model not on disk says so (Models tab) instead of downloading inside the request
        return LLMEngine.from_choice(studio, hub.on_disk_choice(studio, studio.choices["chat"]))
    if cfg.source == PATH:
        if not cfg.path.strip():
            raise ValueError("Enter a hub id, a model folder or a .gguf file.")
        try:
            studio.jobs.check_path(Path(cfg.path.strip()).expanduser(), owner,
                                   studio.settings.exports_dir)
        except KeyError:
            raise ValueError(f"{cfg.path.strip()} does not exist.") from None
        adapter = adapter_base(cfg.path.strip())
        if adapter is not None:  # a LoRA adapter folder (e.g. a QLoRA run's): base + adapter
            base, gguf = adapter
            return TransformersEngine(studio, ModelSource(hub.require_local(studio, base),
                                                          cfg.quantization,
                                                          gguf_file=gguf or None),
                                      adapter=cfg.path.strip())
        return TransformersEngine(studio, ModelSource(hub.require_local(studio, cfg.path.strip()),
                                                      cfg.quantization))
    if cfg.source == SERVER:
        return OpenAIEngine(cfg.server_url, cfg.server_model, cfg.api_key or None)
    raise ValueError(f"unknown model source {cfg.source!r}")


def adapter_base(path: str) -> tuple[str, str] | None:
    """(base model, gguf file) of a PEFT adapter folder, or None when `path` is not one. The
    studio's run card names the base exactly (GGUF file included); otherwise peft's own
    ``base_model_name_or_path``."""
    import json
    from pathlib import Path

    folder = Path(path).expanduser()
    if not (folder / "adapter_config.json").is_file():
        return None
    card = folder / "run_card.json"
    if card.is_file():
        data = json.loads(card.read_text())
        return data["base_model"], data.get("gguf_file") or ""
    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path} is a LoRA adapter but does not say which base model it needs")
    return base, ""


def model_label(studio: Any) -> str:
    choice = studio.choices["chat"]
    if choice.source is None:
        return f"{choice.title} (not available: {choice.note})"
    return f"{choice.title} · {choice.quantization}"


def preload(studio: Any, engine: LLMEngine) -> str:
    """Load the model now (or check the server) so the first message is quick."""
    if isinstance(engine, OpenAIEngine):
        names = engine.list_models()
        return f"Server answers; it offers: {', '.join(names) or 'no models listed'}."
    with studio.models.use(engine.key) as llm:
        size = studio.models.stats(engine.key).get("size", 0)
        path = "CUDA-graph decode" if llm.decoder is not None and llm.decoder.use_cuda_graphs \
            else "static-cache decode" if llm.decoder is not None else "generate()"
        return (f"Loaded **{engine.name}** ({llm.quantization}, {format_bytes(size)} measured, "
                f"{llm.max_context}-token context, {path}).")


# ----- demo tools ----------------------------------------------------------------------------
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.Pow: operator.pow, ast.Mod: operator.mod,
        ast.FloorDiv: operator.floordiv, ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculate(expression: str) -> float:
    """Evaluate an arithmetic expression exactly, e.g. (17 * 23) / 4.

    Args:
        expression: Numbers with + - * / // % ** and parentheses.
    """
    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            if isinstance(node.op, ast.Pow) and abs(ev(node.right)) > 100:
                raise ValueError("exponent too large")
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"not plain arithmetic: {ast.unparse(node)}")

    return ev(ast.parse(expression, mode="eval").body)


def current_time(timezone: str = "UTC") -> str:
    """The current date and time in a time zone.

    Args:
        timezone: An IANA time zone name such as Europe/Paris or UTC.
    """
    try:
        return dt.datetime.now(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M:%S %Z")
    except ZoneInfoNotFoundError:
        return f"unknown time zone {timezone!r}"


DEMO_TOOLS = [calculate, current_time]


# ----- the streamed reply ----------------------------------------------------------------------
def stats_line(studio: Any, engine: LLMEngine, stats: TurnStats | None) -> str:
    """Tokens/s, time to first token and VRAM, as the tab shows under the chat."""
    parts = [f"**{engine.name}**"]
    if stats is not None:
        parts.append(f"{stats.new_tokens} tokens · {stats.decode_tokens_per_s:.1f} tok/s · "
                     f"first token {stats.ttft_s:.2f} s · prompt {stats.prompt_tokens} tokens")
        if stats.peak_vram is not None:
            parts.append(f"VRAM peak {format_bytes(stats.peak_vram)}")
        if stats.stopped:
            parts.append("stopped")
    allocated = studio.probe.allocated()
    if allocated is not None:
        parts.append(f"VRAM now {format_bytes(allocated)} of {format_bytes(studio.models.budget)}")
    size = studio.models.stats(engine.key).get("size") if hasattr(engine, "key") else None
    if size:  # the model's measured size, on the card or (no GPU) in RAM
        where = "VRAM" if studio.probe.device == "cuda" else "RAM (no GPU)"
        parts.append(f"model {format_bytes(size)} in {where}")
    return " · ".join(parts)


def to_engine_messages(system_prompt: str, history: list[dict]) -> list[dict]:
    """Chatbot messages (tool displays included) -> the conversation the model sees."""
    out = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    for m in history:
        if (m.get("metadata") or {}).get("title"):
            continue  # tool-call and notice bubbles are for the reader
        content = m.get("content")
        if isinstance(content, list):  # Gradio may send text parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if m.get("role") in ("user", "assistant") and isinstance(content, str):
            out.append({"role": m["role"], "content": content})
    return out


def stream_reply(studio: Any, cfg: ChatConfig, history: list[dict], message: str,
                 stop_event: threading.Event | None = None, owner: Any = ALL
                 ) -> Iterator[tuple[list[dict], str]]:
    """Yield (chatbot messages, stats line) as the reply streams in."""
    if not message.strip():
        raise ValueError("Type a message first.")
    engine = engine_for(studio, cfg, owner)
    history = list(history) + [{"role": "user", "content": message}]
    messages = to_engine_messages(cfg.system_prompt, history)
    answer = {"role": "assistant", "content": ""}
    shown = history + [answer]
    tools = DEMO_TOOLS if cfg.use_tools else None
    if tools:
        note = tools_unsupported(engine)
        if note:  # warn and carry on without tools, as RAG does
            tools = None
            shown.insert(len(shown) - 1, {"role": "assistant", "content": note,
                                          "metadata": {"title": "Note"}})
    yield _copy(shown), stats_line(studio, engine, None)
    for ev in engine.stream_chat(messages, cfg.settings, tools=tools, stop_event=stop_event):
        if ev.kind == "text":
            answer["content"] += ev.text
        elif ev.kind == "notice":
            shown.insert(len(shown) - 1, {"role": "assistant", "content": ev.text,
                                          "metadata": {"title": "Note"}})
        elif ev.kind == "tool_call":
            c = ev.tool_call
            outcome = c.result if c.error is None else f"error: {c.error}"
            shown.insert(len(shown) - 1, {
                "role": "assistant", "content": f"`{c.name}({c.arguments})` → {outcome}",
                "metadata": {"title": f"Tool: {c.name}"}})
        elif ev.kind == "done":
            answer["content"] = ev.text or answer["content"]
            yield _copy(shown), stats_line(studio, engine, ev.stats)
            return
        yield _copy(shown), stats_line(studio, engine, None)


def _copy(messages: list[dict]) -> list[dict]:
    """A snapshot, so each streamed update keeps the text it had when it was sent."""
    return [dict(m) for m in messages]


def tools_unsupported(engine: LLMEngine) -> str:
    """A note when the engine's model cannot call tools, else ""."""
    from studio.llm import NoToolTemplate

    try:
        engine.check_tools()
    except NoToolTemplate as e:
        return (f"{e} Tools are off for this reply; the model answers without them "
                "(untick 'Let the model call tools', or pick a tool-trained model such as "
                "Llama-3.1 or Qwen2.5).")
    return ""


def error_bubble(text: str) -> dict:
    """A failed turn, said inside the conversation (no red overlay blocks the chat)."""
    return {"role": "assistant", "content": text, "metadata": {"title": "⚠️ Error"}}


def without_errors(history: list[dict]) -> list[dict]:
    """The conversation without the error bubbles of failed turns."""
    return [m for m in history if (m.get("metadata") or {}).get("title") != "⚠️ Error"]


def regenerate_from(history: list[dict], index: int) -> tuple[list[dict], str]:
    """(history before the user turn, its text) to answer again: `index` is the retried
    message (Gradio passes the user message; an assistant index walks back to its user)."""
    history = list(history or [])
    i = min(index, len(history) - 1)
    while i >= 0 and history[i].get("role") != "user":
        i -= 1
    if i < 0:
        raise ValueError("There is no message to answer again.")
    content = history[i].get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return without_errors(history[:i]), str(content or "")


def edit_from(history: list[dict], index: int, value: str) -> tuple[list[dict], str]:
    """(history before the edited user message, its new text): the turns after an edited
    message are answered again from it."""
    history = list(history or [])
    if not 0 <= index < len(history) or history[index].get("role") != "user":
        raise ValueError("Only your own messages can be edited.")
    if not str(value or "").strip():
        raise ValueError("An edited message cannot be empty.")
    return without_errors(history[:index]), str(value)
