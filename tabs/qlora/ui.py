"""The QLoRA trainer tab: check the data, ask "will it fit?", train as a job, compare base vs
adapter, export, and chat with the adapter. Widgets in, `service` calls, `gr.Error` out."""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio.llm import LLMError
from studio.models import BudgetExceeded
from studio.sessions import owner_of
from studio.ui.examples import asset
from studio.ui.widgets import check_run, job_panel, owned_choices, owner_state
from tabs.qlora import service
from tabs.qlora.config import GGUF_TYPES, SCHEDULES, QLoRAConfig, default_of, help_of, label_of
from tabs.qlora.dataset import DatasetError

SETTINGS = ("lora_r", "lora_alpha", "lora_dropout", "target_modules", "gradient_checkpointing",
            "micro_batch_size", "grad_accumulation", "learning_rate", "schedule",
            "warmup_steps", "epochs", "max_steps", "packing", "quantization", "seed",
            "eval_steps", "save_steps", "tensorboard", "wandb",
            # appended, so positional API calls made before they existed keep working
            "fused_kernels", "compile_layers", "offload_activations")
INTS = {"lora_r", "lora_alpha", "micro_batch_size", "grad_accumulation", "warmup_steps",
        "max_steps", "seed", "eval_steps", "save_steps", "max_seq_length"}


def _widget(name: str) -> gr.components.Component:
    """One settings widget, labelled from the config's field metadata."""
    value, label, info = default_of(name), label_of(name), help_of(name) or None
    if isinstance(value, bool):
        return gr.Checkbox(value=value, label=label, info=info)
    if name == "schedule":
        return gr.Dropdown(list(SCHEDULES), value=value, label=label)
    if name == "quantization":
        return gr.Radio(["nf4", "none"], value=value, label=label, info=info)
    if name in ("fused_kernels", "compile_layers", "offload_activations"):
        return gr.Radio(list(QLoRAConfig._field(name).metadata["choices"]), value=value,
                        label=label, info=info)
    if isinstance(value, str):
        return gr.Textbox(value=value, label=label, info=info)
    return gr.Number(value=value, label=label, info=info, precision=0 if name in INTS else None)


def build_ui(studio: Any) -> None:
    """The tab's widgets and handlers; called inside ``with gr.Tab(TITLE):``."""
    base_src, base_gguf = service.default_base(studio)
    gr.Markdown("Fine-tune an LLM on your own instruction pairs: 4-bit NF4 base + LoRA on one "
                "card. Training is a job: close the browser and come back.")
    if not service.is_cuda(studio):
        gr.Markdown(f"**Note:** {service.CPU_UI_NOTE}")

    gr.Markdown("### 1. Data")
    with gr.Row():
        base = gr.Textbox(value=base_src, label=label_of("base_model"),
                          info=help_of("base_model"), scale=3)
        gguf = gr.Textbox(value=base_gguf, label=label_of("gguf_file"), scale=2)
    with gr.Row():
        train_file = gr.File(label="Training data (JSONL, JSON or CSV)", type="filepath",
                             file_types=[".jsonl", ".json", ".csv"])
        eval_file = gr.File(label="Eval data (optional)", type="filepath",
                            file_types=[".jsonl", ".json", ".csv"])
    if example_pairs := asset("qlora", "instructions.jsonl"):
        gr.Examples([[example_pairs]], inputs=[train_file], cache_examples=False,
                    label="Example data (24 instruction pairs)", elem_id="qlora-examples")
    with gr.Row():
        eval_fraction = gr.Number(value=default_of("eval_fraction"),
                                  label=label_of("eval_fraction"), info=help_of("eval_fraction"))
        max_len = gr.Number(value=default_of("max_seq_length"), precision=0,
                            label=label_of("max_seq_length"))
        skip_bad = gr.Checkbox(value=False, label=label_of("skip_bad_records"),
                               info=help_of("skip_bad_records"))
        on_prompt = gr.Checkbox(value=False, label=label_of("train_on_prompt"),
                                info=help_of("train_on_prompt"))
    check_btn = gr.Button("Check data")
    report_md = gr.Markdown()
    with gr.Row():
        preview = gr.Textbox(label="Preview through the chat template", lines=12,
                             interactive=False, scale=3)
        hist = gr.BarPlot(x="tokens", y="examples", color="fits", sort=None,
                          title="Tokens per example", height=280, scale=2)

    gr.Markdown("### 2. Settings")
    widgets: dict[str, Any] = {}
    for row in (SETTINGS[:5], SETTINGS[5:10], SETTINGS[10:15], SETTINGS[15:19],
                SETTINGS[19:]):
        with gr.Row():
            for name in row:
                widgets[name] = _widget(name)
    with gr.Row():
        fit_btn = gr.Button("Will it fit?")
        start = gr.Button("Start training", variant="primary")
    fit_md = gr.Markdown()
    plan_md = gr.Markdown(elem_id="qlora-plan")  # the steps the run will take, before Start
    panel = job_panel(studio, kind=service.KIND, plot_keys=("train_loss", "eval_loss"))

    gr.Markdown("### 3. After training")
    with gr.Row():
        # the page config is everyone's: shared runs only; the page's own come on load/focus
        run_pick = gr.Dropdown(label="Trained run", choices=service.finished_runs(studio, None),
                               allow_custom_value=True, scale=3)
        compare_btn = gr.Button("Base vs adapter", scale=1)
    results_md = gr.Markdown()
    # fixed shares of the width: long replies wrap inside their column instead of pushing
    # the adapter column off the right edge
    samples = gr.Dataframe(headers=["prompt", "expected", "base", "adapter"], wrap=True,
                           column_widths=["22%", "22%", "28%", "28%"],
                           label="Eval prompts: base vs adapter (greedy)",
                           elem_id="qlora-samples")
    with gr.Row():
        merge = gr.Checkbox(value=False, label=label_of("merge_fp16"), info=help_of("merge_fp16"))
        gguf_pick = gr.Radio(list(GGUF_TYPES), value=default_of("export_gguf"),
                             label=label_of("export_gguf"), info=help_of("export_gguf"))
        export_btn = gr.Button("Export adapter")
    export_md = gr.Markdown()
    chat_tab = studio.extras.get("ui", {}).get("chat_model")
    to_chat = gr.Button("Chat with it in the Chat tab", visible=chat_tab is not None)
    chatbot = gr.Chatbot(label="Chat with the adapter", height=300)
    with gr.Row():
        msg = gr.Textbox(label="Message", scale=4)
        send = gr.Button("Send", scale=1)

    # ----- handlers --------------------------------------------------------------------------
    data_inputs = [base, gguf, train_file, eval_file, eval_fraction, max_len, skip_bad,
                   on_prompt]
    all_inputs = data_inputs + [widgets[n] for n in SETTINGS]

    def config_of(values: tuple) -> QLoRAConfig:
        names = ["base_model", "gguf_file", "train_file", "eval_file", "eval_fraction",
                 "max_seq_length", "skip_bad_records", "train_on_prompt", *SETTINGS]
        raw = dict(zip(names, values, strict=True))
        try:
            raw["train_file"] = service.store_upload(studio, raw["train_file"])
            raw["eval_file"] = service.store_upload(studio, raw["eval_file"])
            for k, v in raw.items():
                if k in INTS or k in ("eval_fraction", "lora_dropout", "learning_rate",
                                      "epochs"):
                    raw[k] = QLoRAConfig.coerce(k, v)  # a bad number names its field
                elif isinstance(v, str):
                    raw[k] = v.strip()
            cfg = QLoRAConfig(**raw)
            cfg.validate()
        except (TypeError, ValueError) as e:
            raise gr.Error(f"Check the settings: {e}") from None
        return cfg

    def do_check(base, gguf, train_file, eval_file, eval_fraction, max_len, skip_bad, on_prompt):
        if not train_file:
            raise gr.Error("Upload a training file first.")
        try:
            v = service.validate(train_file, base, gguf,
                                 QLoRAConfig.coerce("max_seq_length", max_len))
        except (DatasetError, ValueError, LLMError) as e:
            raise gr.Error(str(e)) from None
        # the buckets in numeric order (a string axis sorts as text: 1-256, 1025-1280, 257-512)
        order = [str(t) for t in v.histogram["tokens"]]
        return v.markdown(), v.preview, gr.BarPlot(value=v.histogram, sort=order)

    check_btn.click(do_check, inputs=data_inputs, outputs=[report_md, preview, hist],
                    api_name="qlora_validate", concurrency_limit=1)

    def do_estimate(*values):
        cfg = config_of(values)
        try:
            return service.estimate(studio, cfg).describe().replace("\n", "  \n")
        except ValueError as e:
            raise gr.Error(str(e)) from None

    fit_btn.click(do_estimate, inputs=all_inputs, outputs=[fit_md], api_name="qlora_estimate")

    def do_plan(*values):
        """The steps the run will take (and a warm-up warning), as the settings change."""
        try:
            return service.plan_text(config_of(values))
        except (gr.Error, DatasetError, ValueError, OSError):
            return ""  # half-typed settings: the buttons say what is wrong

    fit_btn.click(do_plan, inputs=all_inputs, outputs=[plan_md], api_name="qlora_plan")
    check_btn.click(do_plan, inputs=all_inputs, outputs=[plan_md], api_visibility="private",
                    show_progress="hidden")
    for comp in (train_file, eval_file, eval_fraction, skip_bad,
                 *(widgets[n] for n in ("micro_batch_size", "grad_accumulation",
                                        "warmup_steps", "epochs", "max_steps", "seed"))):
        comp.change(do_plan, inputs=all_inputs, outputs=[plan_md], api_visibility="private",
                    show_progress="hidden")

    owner_in = owner_state()  # the last input of every handler below (scripts send none)

    def do_start(request: gr.Request, *values):
        *values, secret = values
        owner = owner_of(secret, request)
        cfg = config_of(tuple(values))
        if not cfg.train_file:
            raise gr.Error("Upload a training file first.")
        try:
            run_id = service.submit(studio, cfg, owner=owner)
        except (DatasetError, ValueError) as e:
            raise gr.Error(str(e)) from None
        gr.Info(f"Run {run_id} queued.")
        return panel.select(run_id, studio, owner)

    start.click(do_start, inputs=[*all_inputs, owner_in], outputs=[panel.run_picker],
                api_name="qlora_train")

    owned_choices(run_pick, lambda owner: service.finished_runs(studio, owner))

    def do_compare(run_id, secret=None, request: gr.Request = None):
        check_run(studio, run_id, owner_of(secret, request))
        try:
            rows, res = service.samples_table(studio, run_id)
        except (ValueError, KeyError) as e:
            raise gr.Error(str(e)) from None
        text = (f"Step {res['step']} on {res['device']} ({res['quantization']}): eval loss "
                f"{res.get('eval_loss')}, perplexity {res.get('eval_ppl')}")
        return text, rows

    compare_btn.click(do_compare, inputs=[run_pick, owner_in], outputs=[results_md, samples],
                      api_name="qlora_compare")

    def do_export(run_id, merge_fp16, gguf_type="none", secret=None,
                  request: gr.Request = None):
        owner = owner_of(secret, request)
        check_run(studio, run_id, owner)
        try:
            dest = service.export(studio, run_id, bool(merge_fp16))
        except (ValueError, KeyError, OSError) as e:
            raise gr.Error(str(e)) from None
        text = f"Exported to `{dest}` (adapter safetensors + RUN_CARD.md)"
        if merge_fp16:
            text += f"  \nMerged fp16 model: `{dest / 'merged-fp16'}`."
        if gguf_type and gguf_type != "none":
            try:  # a model the export cannot write says why; the adapter export above stands
                job = service.submit_gguf(studio, run_id, gguf_type, owner=owner)
            except (ValueError, KeyError, OSError) as e:
                text += f"  \n⚠️ **No GGUF export:** {e}"
            else:
                text += (f"  \nGGUF {gguf_type} export queued as run `{job}`: follow it in the "
                         "job panel above; its Outputs offer the .gguf and an Ollama Modelfile.")
        return text

    def show_gguf_job(run_id, gguf_type, secret=None, request: gr.Request = None):
        """After Export: the job panel shows the GGUF export just queued, if one was."""
        owner = owner_of(secret, request)
        jobs = service.gguf_jobs(studio, run_id, owner) if gguf_type != "none" else []
        return panel.select(jobs[0], studio, owner) if jobs else gr.skip()

    export_btn.click(do_export, inputs=[run_pick, merge, gguf_pick, owner_in],
                     outputs=[export_md], api_name="qlora_export", concurrency_id="gpu"
                     ).success(show_gguf_job, inputs=[run_pick, gguf_pick, owner_in],
                               outputs=[panel.run_picker], api_visibility="private")

    def do_chat(run_id, message, history, secret=None, request: gr.Request = None):
        check_run(studio, run_id, owner_of(secret, request))  # another's adapter: "No run"
        history = list(history or [])
        try:
            reply = service.chat(studio, run_id, history, message or "")
        except (ValueError, KeyError, LLMError, BudgetExceeded) as e:
            raise gr.Error(str(e)) from None
        history += [{"role": "user", "content": message},
                    {"role": "assistant", "content": reply}]
        return history, ""

    send.click(do_chat, inputs=[run_pick, msg, chatbot, owner_in], outputs=[chatbot, msg],
               api_name="qlora_chat", concurrency_id="gpu")

    if chat_tab is not None:  # one click: the Chat tab, pointed at base + this adapter
        from tabs.chat.service import PATH

        tab_set = studio.extras["ui"].get("tabs")

        def do_to_chat(run_id, secret=None, request: gr.Request = None):
            check_run(studio, run_id, owner_of(secret, request))
            try:
                run_dir, _ = service.run_paths(studio, run_id)
            except ValueError as e:
                raise gr.Error(str(e)) from None
            out = [PATH, str(run_dir / "adapter")]
            return out + ([gr.Tabs(selected="tabs.chat")] if tab_set is not None else [])

        to_chat.click(do_to_chat, inputs=[run_pick, owner_in],
                      outputs=list(chat_tab) + ([tab_set] if tab_set is not None else []),
                      api_visibility="private")
    msg.submit(do_chat, inputs=[run_pick, msg, chatbot, owner_in], outputs=[chatbot, msg],
               api_visibility="private", concurrency_id="gpu")
