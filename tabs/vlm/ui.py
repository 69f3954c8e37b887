"""The Vision tab: chat about pictures with a 4-bit VLM (streamed, Stop, tokens/s), grounding
boxes drawn and sent to the YOLO labeler, and the Adapt job (data check, "will it fit?", the
shared job panel with progress, loss plot, cancel and resume, before/after samples, export,
chat with it in one click). Widgets in, `service` / `adapt` calls, `gr.Error` out."""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio.llm import GenerationSettings, LLMError
from studio.models import BudgetExceeded
from studio.sessions import owner_of, session_of
from studio.ui.widgets import check_run, job_panel, owned_choices, owner_state
from tabs.qlora.dataset import DatasetError
from tabs.vlm import adapt, service
from tabs.vlm.config import VLMAdaptConfig
from tabs.vlm.images import ImageRefused
from tabs.vlm.service import CATALOGUE, QUANTIZATIONS, VLMChatConfig

_FAILURES = (ValueError, LLMError, BudgetExceeded, ImageRefused)


def picture_input(**kwargs: Any) -> gr.Image:
    """A gr.Image (upload, paste, webcam) that passes the uploaded file on untouched (no
    re-encoding: 16-bit and CMYK reach `tabs.vlm.images`, which converts them) and hands a file
    it cannot open to the handler, which says what is wrong with it; gr.Image's own check ends
    in a bare "Error". (Wrapped per instance: a gr.Image subclass would make Gradio write a
    .pyi stub next to this file.)"""
    image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard", "webcam"],
                     **kwargs)
    plain = image.preprocess

    def preprocess(payload: Any) -> str | None:
        try:
            return plain(payload)
        except Exception:
            path = getattr(payload, "path", None)
            return str(path) if path else None

    image.preprocess = preprocess
    return image


def _config(model, quantization, max_pixels, system_prompt, max_new_tokens, temperature,
            top_p, repetition_penalty, seed) -> VLMChatConfig:
    """Widget values -> VLMChatConfig; bad values become a gr.Error."""
    try:
        settings = GenerationSettings(
            max_new_tokens=int(max_new_tokens), temperature=float(temperature),
            top_p=float(top_p), repetition_penalty=float(repetition_penalty),
            seed=None if seed in (None, "", -1) else int(seed)).validate()
        cap = int(max_pixels or 0)
    except (TypeError, ValueError) as e:
        raise gr.Error(f"Check the sampling settings: {e}") from None
    return VLMChatConfig(model=(model or "").strip(), quantization=quantization or "auto",
                         max_pixels=cap, system_prompt=system_prompt or "", settings=settings)


def _examples() -> list[list[Any]]:
    a = service.ASSETS
    rows = [["shapes.png", None, "Describe this picture."],
            ["sign.png", None, "Read the text in this picture."],
            ["shapes.png", None, "How many circles are there?"],
            ["room_a.png", "room_b.png", "What is different between the two pictures?"],
            ["shapes.png", None, service.GROUNDING_HINT.format(thing="circle")]]
    return [[str(a / x), str(a / y) if y else None, q] for x, y, q in rows
            if (a / x).is_file()]


def build_ui(studio: Any) -> None:
    stops = studio.stops
    default = service.default_model(studio)
    gr.Markdown("Ask about pictures with a vision-language model (4-bit on a GPU, streamed at "
                "the chat engine's speed): describe, read text, count, compare two pictures. "
                "Qwen2.5-VL also answers *where* things are with boxes, which go to the YOLO "
                "labeler as pre-labels.")
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="Conversation", height=460, buttons=["copy"])
            with gr.Row():
                image = picture_input(label="Picture (upload, paste or webcam)", height=200)
                image2 = picture_input(label="Second picture (optional)", height=200)
            with gr.Row():
                message = gr.Textbox(placeholder="Ask about the picture and press Enter",
                                     show_label=False, scale=5)
                send = gr.Button("Send", variant="primary", scale=1)
                stop = gr.Button("Stop", variant="stop", scale=1)
            stats = gr.Markdown()
            clear = gr.Button("New chat", size="sm")
            examples = _examples()
            if examples:
                gr.Examples(examples, inputs=[image, image2, message], label="Examples",
                            cache_examples=False, elem_id="vlm-examples")
        with gr.Column(scale=2):
            model = gr.Dropdown([(label, hub) for label, hub in CATALOGUE],
                                value=default or None, allow_custom_value=True,
                                label="Model (hub id or local folder)",
                                info="4-bit NF4 on a GPU; the vision tower stays in bf16")
            adapter = gr.Textbox(label="Adapter (optional)", placeholder="an adapted run's "
                                 "adapter folder; 'Chat with it' below fills this in")
            quantization = gr.Dropdown(QUANTIZATIONS, value="auto", label="Load as")
            max_pixels = gr.Number(value=0, precision=0, label="Picture cap (pixels)",
                                   info="dynamic-resolution models (Qwen2.5-VL): 0 = from the "
                                   f"VRAM budget ({service.pixel_cap(studio.models.budget):,})")
            system_prompt = gr.Textbox(label="System prompt", lines=2)
            with gr.Accordion("Sampling", open=False):
                max_new = gr.Slider(16, 2048, value=512, step=16, label="Max new tokens")
                temperature = gr.Slider(0, 2, value=0.2, step=0.05, label="Temperature",
                                        info="0 = greedy, the same answer every time")
                top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p")
                rep = gr.Slider(0.8, 2, value=1.05, step=0.05, label="Repetition penalty")
                seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
            with gr.Row():
                load_btn = gr.Button("Load model now")
                fit_btn = gr.Button("Will it fit?")
            load_md = gr.Markdown()
            with gr.Accordion("Grounding: boxes from the answer", open=True):
                drawn = gr.Image(label="Boxes on the picture", interactive=False, height=260)
                ground_md = gr.Markdown()
                boxes = gr.Code(label="Boxes (pixels; edit before sending)", language="json",
                                value="[]", interactive=True)
                last_pic = picture_input(visible=False, label="Last picture")
                with gr.Row():
                    dataset = gr.Textbox(label="YOLO dataset", value="vlm-prelabels", scale=2)
                    to_yolo = gr.Button("Send boxes to the YOLO labeler", scale=2)
                yolo_md = gr.Markdown()

    config_inputs = [model, quantization, max_pixels, system_prompt, max_new, temperature,
                     top_p, rep, seed]

    def grounding(cfg: VLMChatConfig, history: list[dict]):
        roots = service.allowed_roots(studio)
        pic = service.last_picture(history, roots)
        g = service.ground(studio, cfg, service.last_answer(history), pic)
        payload = service.json_boxes(g.boxes)
        return (str(pic) if pic else None, str(g.drawn) if g.drawn else None, payload,
                g.summary)

    def do_send(msg, pic, pic2, history, *values, request: gr.Request = None):
        *values, adapter_path, secret = values
        cfg = _config(*values)
        keep = gr.update()
        try:
            lora = adapt.adapter_folder(studio, adapter_path, owner_of(secret, request))
            with stops.running(service.STOP, session_of(request)) as flag:
                shown = history or []
                for shown, line in service.stream_reply(studio, cfg, history or [], msg or "",
                                                        [pic, pic2], flag, adapter=lora):
                    yield shown, line, "", None, None, keep, keep, keep, keep
            yield (shown, line, "", None, None, *grounding(cfg, shown))
        except _FAILURES as e:
            raise gr.Error(str(e)) from None

    send_args = dict(fn=do_send, inputs=[message, image, image2, chatbot, *config_inputs,
                                         adapter, owner_state()],
                     outputs=[chatbot, stats, message, image, image2, last_pic, drawn, boxes,
                              ground_md], concurrency_id="gpu")
    send.click(**send_args, api_name="vlm_send")
    message.submit(**send_args, api_visibility="private")

    def do_stop(request: gr.Request = None) -> str:
        stopped = stops.stop(service.STOP, session_of(request))
        return "Stopping…" if stopped else "Nothing is generating."

    stop.click(do_stop, outputs=[load_md], api_name="vlm_stop", queue=False)
    clear.click(lambda: ([], "", None, None, "[]", ""),
                outputs=[chatbot, stats, last_pic, drawn, boxes, ground_md],
                api_visibility="private")

    def do_load(*values):
        try:
            return service.preload(studio, _config(*values))
        except _FAILURES as e:
            raise gr.Error(str(e)) from None

    load_btn.click(do_load, inputs=config_inputs, outputs=[load_md], api_name="vlm_load",
                   concurrency_id="gpu")

    def do_fit(*values):
        try:
            return service.chat_fit(studio, _config(*values)).replace("\n", "  \n")
        except _FAILURES as e:
            raise gr.Error(str(e)) from None

    fit_btn.click(do_fit, inputs=config_inputs, outputs=[load_md], api_name="vlm_chat_estimate")

    def do_ground(answer, pic, *values):
        """Boxes of any answer text against a picture (for scripts and pasted answers)."""
        try:
            g = service.ground(studio, _config(*values), answer or "", pic)
        except _FAILURES as e:
            raise gr.Error(str(e)) from None
        return str(g.drawn) if g.drawn else None, service.json_boxes(g.boxes), \
            g.summary or "No boxes found in the answer."

    answer_box = gr.Textbox(visible=False)
    gr.Button(visible=False).click(do_ground, inputs=[answer_box, last_pic, *config_inputs],
                                   outputs=[drawn, boxes, ground_md], api_name="vlm_ground")

    def do_to_yolo(name, pic, payload):
        try:
            return service.to_yolo(studio, name, pic, payload)
        except (ValueError, KeyError) as e:
            raise gr.Error(str(e)) from None

    to_yolo.click(do_to_yolo, inputs=[dataset, last_pic, boxes], outputs=[yolo_md],
                  api_name="vlm_to_yolo")

    build_adapt(studio, chat_targets=(model, adapter))


# ----- Adapt ------------------------------------------------------------------------------------
F = VLMAdaptConfig
SETTINGS = ("lora_r", "lora_alpha", "lora_dropout", "target_modules", "train_projector",
            "gradient_checkpointing", "quantization", "micro_batch_size", "grad_accumulation",
            "learning_rate", "schedule", "warmup_steps", "epochs", "max_steps", "seed",
            "eval_steps", "save_steps", "max_pixels")
INTS = {"lora_r", "lora_alpha", "micro_batch_size", "grad_accumulation", "warmup_steps",
        "max_steps", "seed", "eval_steps", "save_steps", "max_seq_length", "max_pixels"}
FLOATS = {"lora_dropout", "learning_rate", "epochs", "eval_fraction"}


def _widget(name: str) -> Any:
    value, label, info = F.default_of(name), F.label_of(name), F.help_of(name) or None
    choices = F._field(name).metadata.get("choices")
    if isinstance(value, bool):
        return gr.Checkbox(value=value, label=label, info=info)
    if choices:
        return gr.Radio(list(choices), value=value, label=label, info=info)
    if isinstance(value, str):
        return gr.Textbox(value=value, label=label, info=info)
    return gr.Number(value=value, label=label, info=info, precision=0 if name in INTS else None)


def _on_disk(studio: Any, base: str | None) -> str:
    """The base model's folder on disk for a hub id (`NotOnDisk`, pointing to the Models tab,
    when it is not downloaded yet); local folders and empty values unchanged."""
    from studio.hub import require_local

    base = (base or "").strip()
    return require_local(studio, base, "The base model") if base else base


def build_adapt(studio: Any, chat_targets: tuple[Any, Any] | None = None) -> None:
    """`chat_targets`: the chat's (model, adapter) widgets, filled by "Chat with it"."""
    with gr.Accordion("Adapt the model to your own pictures (a job)", open=False):
        gr.Markdown("A zip of pictures plus `pairs.jsonl` (ShareGPT / LLaMA-Factory: "
                    "`messages` with `<image>` in the user turn and an `images` list) or "
                    "`pairs.csv` (`image,caption`). LoRA goes on the language model (4-bit on "
                    "a GPU); the vision tower stays frozen, the projector optionally trains.")
        with gr.Row():
            base = gr.Textbox(label=F.label_of("base_model"), info=F.help_of("base_model"),
                              scale=3)
            data_zip = gr.File(label="Data (zip)", type="filepath", file_types=[".zip"],
                               scale=2)
        with gr.Row():
            max_len = gr.Number(value=F.default_of("max_seq_length"), precision=0,
                                label=F.label_of("max_seq_length"),
                                info=F.help_of("max_seq_length"))
            eval_fraction = gr.Number(value=F.default_of("eval_fraction"),
                                      label=F.label_of("eval_fraction"))
            skip_bad = gr.Checkbox(value=False, label=F.label_of("skip_bad_records"),
                                   info=F.help_of("skip_bad_records"))
        check_btn = gr.Button("Check data")
        report_md = gr.Markdown()
        with gr.Row():
            preview = gr.Textbox(label="Preview", lines=10, interactive=False, scale=3)
            hist = gr.BarPlot(x="tokens", y="examples", color="fits", sort=None, height=260,
                              title="Tokens per pair (pictures included)", scale=2)
        widgets: dict[str, Any] = {}
        for row in (SETTINGS[:6], SETTINGS[6:12], SETTINGS[12:]):
            with gr.Row():
                for name in row:
                    widgets[name] = _widget(name)
        with gr.Row():
            fit_btn = gr.Button("Will it fit?")
            start = gr.Button("Start adapting", variant="primary")
        fit_md = gr.Markdown()
        panel = job_panel(studio, kind=adapt.KIND, plot_keys=("train_loss", "eval_loss"))
        with gr.Row():
            # the page config is everyone's: shared runs only; the page's own come on load
            run_pick = gr.Dropdown(label="Adapted run", choices=adapt.finished_runs(studio, None),
                                   allow_custom_value=True, scale=3)
            compare_btn = gr.Button("Before vs after", scale=1)
            export_btn = gr.Button("Export adapter", scale=1)
            to_chat = gr.Button("Chat with it", scale=1, visible=chat_targets is not None)
        results_md = gr.Markdown()
        samples = gr.Dataframe(headers=["picture", "prompt", "expected", "base", "adapter"],
                               wrap=True, label="Held-out pictures: base vs adapter (greedy)")

    data_inputs = [base, data_zip, max_len, eval_fraction, skip_bad]
    all_inputs = data_inputs + [widgets[n] for n in SETTINGS]

    def config_of(values: tuple) -> VLMAdaptConfig:
        names = ["base_model", "train_file", "max_seq_length", "eval_fraction",
                 "skip_bad_records", *SETTINGS]
        raw = dict(zip(names, values, strict=True))
        try:
            raw["train_file"] = adapt.stage(studio, raw["train_file"])
            for k, v in raw.items():
                if k in INTS:
                    raw[k] = int(v or 0)
                elif k in FLOATS:
                    raw[k] = float(v)
                elif isinstance(v, str):
                    raw[k] = v.strip()
            cfg = VLMAdaptConfig(**raw)
            cfg.validate()
        except (TypeError, ValueError) as e:
            raise gr.Error(f"Check the settings: {e}") from None
        return cfg

    def do_check(base, data_zip, max_len, *_):
        if not data_zip:
            raise gr.Error("Upload the data zip first.")
        try:
            v = adapt.validate(studio, adapt.stage(studio, data_zip), _on_disk(studio, base),
                               int(max_len))
        except (DatasetError, ValueError, OSError) as e:
            raise gr.Error(str(e)) from None
        return v.markdown(), v.preview, v.histogram

    check_btn.click(do_check, inputs=data_inputs, outputs=[report_md, preview, hist],
                    api_name="vlm_validate", concurrency_limit=1)

    def do_estimate(*values):
        try:
            return adapt.estimate(studio, config_of(values)).describe().replace("\n", "  \n")
        except ValueError as e:
            raise gr.Error(str(e)) from None

    fit_btn.click(do_estimate, inputs=all_inputs, outputs=[fit_md], api_name="vlm_estimate")

    owner_in = owner_state()  # the last input of the handlers below (scripts send none)

    def do_start(request: gr.Request, *values):
        *values, secret = values
        owner = owner_of(secret, request)
        try:
            cfg = config_of(tuple(values))
            _on_disk(studio, cfg.base_model)  # the job would download it unseen
            run_id = adapt.submit(studio, cfg, owner=owner)
        except (DatasetError, ValueError) as e:
            raise gr.Error(str(e)) from None
        gr.Info(f"Run {run_id} queued.")
        return panel.select(run_id, studio, owner)

    start.click(do_start, inputs=[*all_inputs, owner_in], outputs=[panel.run_picker],
                api_name="vlm_train")

    owned_choices(run_pick, lambda owner: adapt.finished_runs(studio, owner))

    def do_compare(run_id, secret=None, request: gr.Request = None):
        check_run(studio, run_id, owner_of(secret, request))
        try:
            rows, res = adapt.samples_table(studio, run_id)
        except (ValueError, KeyError) as e:
            raise gr.Error(str(e)) from None
        return (f"Step {res['step']} on {res['device']} ({res['quantization']}): eval loss "
                f"{res.get('eval_loss')}", rows)

    compare_btn.click(do_compare, inputs=[run_pick, owner_in], outputs=[results_md, samples],
                      api_name="vlm_compare")

    def do_export(run_id, secret=None, request: gr.Request = None):
        check_run(studio, run_id, owner_of(secret, request))
        try:
            dest = adapt.export(studio, run_id)
        except (ValueError, KeyError, OSError) as e:
            raise gr.Error(str(e)) from None
        return f"Exported to `{dest}` (LoRA safetensors, projector if trained, RUN_CARD.md)"

    export_btn.click(do_export, inputs=[run_pick, owner_in], outputs=[results_md],
                     api_name="vlm_export")

    if chat_targets is not None:
        def do_to_chat(run_id, secret=None, request: gr.Request = None):
            check_run(studio, run_id, owner_of(secret, request))
            try:
                return list(adapt.chat_target(studio, run_id))
            except (ValueError, KeyError) as e:
                raise gr.Error(str(e)) from None

        to_chat.click(do_to_chat, inputs=[run_pick, owner_in], outputs=list(chat_targets),
                      api_name="vlm_chat_with_run")
