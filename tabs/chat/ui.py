"""The Chat tab: the shared LLM engine, directly. Widgets in, `service` calls, `gr.Error` out."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from studio.llm import GenerationSettings, LLMError, NoToolTemplate
from studio.models import BudgetExceeded
from studio.sessions import ConversationStore, owner_of, session_of
from studio.ui.errors import USER_ERRORS, to_gr_error
from studio.ui.examples import prompts
from studio.ui.widgets import on_page_load, owner_state
from tabs.chat import service
from tabs.chat.service import PATH, PROFILE, QUANTIZATIONS, SERVER, ChatConfig

_FAILURES = (ValueError, LLMError, NoToolTemplate, BudgetExceeded)
log = logging.getLogger("studio.chat")


def _config(source, path, quantization, server_url, server_model, api_key, system_prompt,
            use_tools, max_new_tokens, temperature, top_p, repetition_penalty, seed
            ) -> ChatConfig:
    """Widget values -> ChatConfig; bad values become a gr.Error."""
    try:
        settings = GenerationSettings(
            max_new_tokens=int(max_new_tokens), temperature=float(temperature),
            top_p=float(top_p), repetition_penalty=float(repetition_penalty),
            seed=None if seed in (None, "", -1) else int(seed)).validate()
    except (TypeError, ValueError) as e:
        raise gr.Error(f"Check the sampling settings: {e}") from None
    return ChatConfig(source=source, path=path or "", quantization=quantization,
                      server_url=server_url or "", server_model=server_model or "",
                      api_key=api_key or "", system_prompt=system_prompt or "",
                      use_tools=bool(use_tools), settings=settings)


def build_ui(studio: Any) -> None:
    stops = studio.stops
    gr.Markdown("Chat with the studio's local model (4-bit on a GPU, streamed), a model folder "
                "or `.gguf` file of your own, or any OpenAI-compatible server (Ollama, "
                "llama.cpp, vLLM).")
    with gr.Row():
        with gr.Column(scale=3):
            # editable user messages and a retry button: edit a question or regenerate
            chatbot = gr.Chatbot(label="Chat", height=480, buttons=["copy"], editable="user",
                                 elem_id="chat-box")
            with gr.Row():
                message = gr.Textbox(placeholder="Type a message and press Enter",
                                     show_label=False, scale=5)
                send = gr.Button("Send", variant="primary", scale=1)
                stop = gr.Button("Stop", variant="stop", scale=1)
            gr.Examples([[t] for t in prompts("chat")], inputs=[message], cache_examples=False,
                        label="Example messages", elem_id="chat-examples")
            stats = gr.Markdown(elem_id="chat-stats")
            with gr.Row():
                clear = gr.Button("New chat", size="sm")
                saved = gr.Dropdown(label="Saved chats (this browser only)", choices=[],
                                    value=None, scale=3, elem_id="chat-saved")
                delete = gr.Button("Delete chat", size="sm")
        with gr.Column(scale=2):
            source = gr.Radio([(f"Studio model: {service.model_label(studio)}", PROFILE),
                               ("Local folder, .gguf file or hub id", PATH),
                               ("OpenAI-compatible server", SERVER)],
                              value=PROFILE, label="Model")
            with gr.Group(visible=False) as path_box:
                path = gr.Textbox(label="Model", placeholder="/models/Qwen2.5-7B-Instruct or "
                                  "model.Q4_K_M.gguf or meta-llama/Llama-3.1-8B-Instruct")
                quantization = gr.Dropdown(QUANTIZATIONS, value="auto", label="Load as",
                                           info="auto: 4-bit NF4 on a GPU, float32 on CPU")
            with gr.Group(visible=False) as server_box:
                server_url = gr.Textbox(value=ChatConfig.server_url, label="Base URL")
                server_model = gr.Textbox(label="Model name", placeholder="llama3.1:8b")
                api_key = gr.Textbox(label="API key (if the server needs one)", type="password")
            system_prompt = gr.Textbox(value=ChatConfig.system_prompt, label="System prompt",
                                       lines=3)
            use_tools = gr.Checkbox(label="Let the model call tools (calculator, clock)",
                                    info="needs a tool-trained model: Llama-3.1, Qwen2.5")
            with gr.Accordion("Sampling", open=False):
                max_new = gr.Slider(16, 4096, value=512, step=16, label="Max new tokens")
                temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature",
                                        info="0 = greedy, the same answer every time")
                top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p")
                rep = gr.Slider(0.8, 2, value=1.0, step=0.05, label="Repetition penalty")
                seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
            load_btn = gr.Button("Load model now")
            load_md = gr.Markdown()

    # other tabs (QLoRA's "chat with it") point the Chat tab at a model through these
    studio.extras.setdefault("ui", {})["chat_model"] = (source, path)
    config_inputs = [source, path, quantization, server_url, server_model, api_key,
                     system_prompt, use_tools, max_new, temperature, top_p, rep, seed]

    def show_source(src: str):
        return gr.update(visible=src == PATH), gr.update(visible=src == SERVER)

    source.change(show_source, inputs=[source], outputs=[path_box, server_box],
                  api_visibility="private")

    store = ConversationStore(studio.settings.home / "chats")
    owner = owner_state()  # this browser's secret, the one of the whole page (it fills it)
    conv = gr.State(None)  # the id the current conversation is saved under

    def on_load(secret):
        return gr.update(choices=store.list(secret), value=None)

    on_page_load(on_load, inputs=[owner], outputs=[saved])

    def turn(request: gr.Request, before: list[dict], msg: str, values, secret=None):
        """Stream one reply to `msg` after `before`. A failure is said inside the chat (and
        as a toast), never as red overlays on the chat and the message box; the message stays
        in the box to try again."""
        try:
            cfg = _config(*values)
            with stops.running("chat", session_of(request)) as stop_event:
                for shown, line in service.stream_reply(studio, cfg, before, msg or "",
                                                        stop_event,
                                                        owner_of(secret, request)):
                    yield shown, line, ""
        except Exception as e:  # noqa: BLE001 - said to the user; unexpected ones logged
            err = to_gr_error(e, "Chat")
            if not isinstance(e, (gr.Error, *_FAILURES, *USER_ERRORS)):
                log.exception("chat reply failed")
            text = getattr(err, "message", None) or str(err)
            gr.Warning(text)
            # the message goes back to the box (not into the chat) to send again
            yield list(before) + [service.error_bubble(text)], "", msg

    # `request` comes first: Gradio fills a gr.Request parameter only before `*values`
    def do_send(request: gr.Request, msg: str, history: list[dict] | None, *values: Any):
        *values, secret = values  # the page's owner secret comes last (owner_state)
        yield from turn(request, service.without_errors(history or []), msg, values, secret)

    def save_chat(secret, conv_id, history):
        """After each turn: the conversation saved for this browser (not its error notes)."""
        clean = service.without_errors(history or [])
        if not any(m.get("role") == "assistant" and m.get("content") for m in clean):
            return gr.skip(), gr.skip()
        try:
            conv_id = conv_id or store.new_id()
            store.save(secret, conv_id, clean)
        except ValueError:  # no store for this browser yet
            return gr.skip(), gr.skip()
        return conv_id, gr.update(choices=store.list(secret), value=conv_id)

    io = dict(outputs=[chatbot, stats, message], concurrency_id="gpu")
    after = dict(fn=save_chat, inputs=[owner, conv, chatbot], outputs=[conv, saved],
                 api_visibility="private", show_progress="hidden")
    send_args = dict(fn=do_send, inputs=[message, chatbot, *config_inputs, owner], **io)
    send.click(**send_args, api_name="chat_send").then(**after)
    message.submit(**send_args, api_visibility="private").then(**after)

    def do_retry(request: gr.Request, retry: gr.RetryData, history, *values: Any):
        *values, secret = values
        before, prompt = service.regenerate_from(history or [], retry.index)
        yield from turn(request, before, prompt, values, secret)

    chatbot.retry(do_retry, inputs=[chatbot, *config_inputs, owner], **io,
                  api_visibility="private").then(**after)

    def do_edit(request: gr.Request, edit: gr.EditData, history, *values: Any):
        *values, secret = values
        before, prompt = service.edit_from(history or [], edit.index, edit.value)
        yield from turn(request, before, prompt, values, secret)

    chatbot.edit(do_edit, inputs=[chatbot, *config_inputs, owner], **io,
                 api_visibility="private").then(**after)

    def do_stop(request: gr.Request) -> str:
        stopped = stops.stop("chat", session_of(request))
        return "Stopping…" if stopped else "Nothing is generating."

    stop.click(do_stop, outputs=[load_md], api_name="chat_stop", queue=False)
    # a new chat clears the conversation, the stats and the message box (and any error state)
    clear.click(lambda: ([], "", "", None, gr.update(value=None)),
                outputs=[chatbot, stats, message, conv, saved], api_visibility="private")

    def do_open(secret, conv_id):
        if not conv_id:
            return gr.skip(), gr.skip()
        return store.load(secret, conv_id), conv_id

    saved.select(do_open, inputs=[owner, saved], outputs=[chatbot, conv],
                 api_visibility="private")

    def do_delete(secret, conv_id):
        if not conv_id:
            raise gr.Error("Pick a saved chat to delete.")
        store.delete(secret, conv_id)
        return [], None, gr.update(choices=store.list(secret), value=None)

    delete.click(do_delete, inputs=[owner, conv], outputs=[chatbot, conv, saved],
                 api_visibility="private")

    def do_load(*values: Any) -> str:
        cfg = _config(*values)
        try:
            engine = service.engine_for(studio, cfg)
            return service.preload(studio, engine)
        except _FAILURES as e:
            raise gr.Error(str(e)) from None

    load_btn.click(do_load, inputs=config_inputs, outputs=[load_md], api_name="chat_load",
                   concurrency_id="gpu")
