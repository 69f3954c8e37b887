"""The Whisper fine-tune tab: prepare data, train as a job (loss and WER plots, Cancel, Resume),
read the before/after results and export. Widgets in, `service` calls, `gr.Error` out.

Scriptable with gradio_client: ``whisper_ft_prepare``, ``whisper_ft_train``,
``whisper_ft_results``, ``whisper_ft_export`` and the job panel's ``whisper_ft_job_view``,
``whisper_ft_cancel``, ``whisper_ft_resume``.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio.sessions import owner_of
from studio.ui.widgets import check_run, job_panel, owned_choices, owner_state
from tabs.whisper.audio import AUDIO_EXTS, VIDEO_EXTS
from tabs.whisper_ft import service
from tabs.whisper_ft.config import BASES, WhisperFTConfig, default_of, help_of, label_of
from tabs.whisper_ft.data import MANIFEST_EXTS, TRANSCRIPT_EXTS, DataError

SETTINGS = ("batch_size", "grad_accumulation", "learning_rate", "warmup_steps", "max_steps",
            "eval_steps", "eval_pieces", "save_steps", "precision", "gradient_checkpointing",
            "optimizer", "spec_augment", "freeze_encoder", "lora_r", "lora_alpha", "seed",
            "export_ct2")
INTS = {"batch_size", "grad_accumulation", "warmup_steps", "max_steps", "eval_steps",
        "eval_pieces", "save_steps", "lora_r", "lora_alpha", "seed"}


def _widget(name: str) -> gr.components.Component:
    value, label, info = default_of(name), label_of(name), help_of(name) or None
    choices = WhisperFTConfig._field(name).metadata.get("choices")
    if isinstance(value, bool):
        return gr.Checkbox(value=value, label=label, info=info)
    if choices:
        return gr.Radio(list(choices), value=value, label=label, info=info)
    return gr.Number(value=value, label=label, info=info, precision=0 if name in INTS else None)


def build_ui(studio: Any) -> None:
    upload_types = sorted(AUDIO_EXTS | VIDEO_EXTS | MANIFEST_EXTS | set(TRANSCRIPT_EXTS)
                          | {".zip"})
    gr.Markdown("Teach Whisper your accents, jargon and names: a short fine-tune on your own "
                "recordings, then transcribe with it in the Transcribe tab.")
    if not service.is_cuda(studio):
        gr.Markdown(f"**Note:** {service.CPU_NOTE}")

    gr.Markdown("### 1. Data")
    with gr.Row():
        files = gr.File(label="Recordings + transcripts (a zip, files, or a CSV/JSONL "
                        "manifest)", file_count="multiple", file_types=upload_types,
                        type="filepath", scale=3)
        with gr.Column(scale=2):
            transcripts = gr.Textbox(label="Transcripts from the Transcribe tab",
                                     info="transcript ids, comma separated (its 'Use as "
                                     "training data' button fills this in)")
            heldout = gr.Number(value=0.1, label="Held-out share",
                                info="pieces kept aside to measure WER before and after")
            prepare_btn = gr.Button("Prepare data")
    summary_md = gr.Markdown()
    dataset_id = gr.Textbox(label="Dataset id", interactive=True)
    rejected = gr.Dataframe(headers=["item", "why it was left out"], wrap=True,
                            label="Left out")

    gr.Markdown("### 2. Train")
    with gr.Row():
        base = gr.Dropdown(list(BASES), value=default_of("base_model"), allow_custom_value=True,
                           label=label_of("base_model"), info=help_of("base_model"), scale=3)
        method = gr.Radio(["auto", "full", "lora"], value="auto", label=label_of("method"),
                          info=help_of("method"), scale=2)
    with gr.Row():
        language = gr.Textbox(value="en", label=label_of("language"),
                              info=help_of("language"))
        task = gr.Radio(["transcribe", "translate"], value="transcribe", label="Task")
        glossary = gr.Textbox(label=label_of("glossary"), info=help_of("glossary"), lines=2,
                              scale=2)
    widgets: dict[str, Any] = {}
    with gr.Accordion("Settings", open=False):
        for row in (SETTINGS[:5], SETTINGS[5:8], SETTINGS[8:11], SETTINGS[11:]):
            with gr.Row():
                for name in row:
                    widgets[name] = _widget(name)
    start = gr.Button("Start training", variant="primary")
    panel = job_panel(studio, kind=service.KIND, plot_keys=("train_loss", "eval_wer"))

    gr.Markdown("### 3. Before / after")
    with gr.Row():
        # the page config is everyone's: shared runs only; the page's own come on load/focus
        run_pick = gr.Dropdown(label="Trained run", choices=service.finished_runs(studio, None),
                               allow_custom_value=True, scale=3)
        show_btn = gr.Button("Show results", scale=1)
        export_btn = gr.Button("Export", scale=1)
    results_md = gr.Markdown()
    changed = gr.Dataframe(headers=["reference", "before", "after", "WER before",
                                    "WER after"], wrap=True,
                           label="Pieces whose transcript changed most")
    export_md = gr.Markdown()

    # ----- handlers --------------------------------------------------------------------------
    def do_prepare(paths, transcript_ids, share):
        ids = [t.strip() for t in (transcript_ids or "").split(",") if t.strip()]
        try:
            s = service.prepare(studio, list(paths or []), ids, float(share or 0))
        except (DataError, ValueError) as e:
            raise gr.Error(str(e)) from None
        return s.markdown(), s.id, [[p.source, p.reason] for p in s.rejected]

    prepare_btn.click(do_prepare, inputs=[files, transcripts, heldout],
                      outputs=[summary_md, dataset_id, rejected], api_name="whisper_ft_prepare",
                      concurrency_limit=2)

    owner_in = owner_state()  # the last input of the handlers below (scripts send none)

    def do_train(request: gr.Request, ds, base_model, meth, lang, tsk, gloss, *values):
        *values, secret = values
        owner = owner_of(secret, request)
        raw: dict[str, Any] = dict(zip(SETTINGS, values, strict=True))
        try:
            for k, v in raw.items():
                if k in INTS:
                    raw[k] = int(v)
                elif k == "learning_rate":
                    raw[k] = float(v)
            cfg = WhisperFTConfig(dataset=(ds or "").strip(),
                                  base_model=(base_model or "").strip(), method=meth,
                                  language=(lang or "").strip(), task=tsk, glossary=gloss or "",
                                  **raw)
            run_id = service.submit(studio, cfg, owner=owner)
        except (TypeError, ValueError) as e:
            raise gr.Error(f"Check the settings: {e}") from None
        gr.Info(f"Run {run_id} queued.")
        return panel.select(run_id, studio, owner)

    start.click(do_train, inputs=[dataset_id, base, method, language, task, glossary,
                                  *[widgets[n] for n in SETTINGS], owner_in],
                outputs=[panel.run_picker], api_name="whisper_ft_train")

    owned_choices(run_pick, lambda owner: service.finished_runs(studio, owner))

    def do_results(run_id, secret=None, request: gr.Request = None):
        check_run(studio, run_id, owner_of(secret, request))
        try:
            res, rows = service.results(studio, run_id)
        except (ValueError, KeyError) as e:
            raise gr.Error(str(e)) from None
        return service.results_markdown(res), rows

    show_btn.click(do_results, inputs=[run_pick, owner_in], outputs=[results_md, changed],
                   api_name="whisper_ft_results")

    def do_export(run_id, secret=None, request: gr.Request = None):
        check_run(studio, run_id, owner_of(secret, request))
        try:
            dest = service.export(studio, run_id)
        except (ValueError, KeyError, OSError) as e:
            raise gr.Error(str(e)) from None
        return (f"Exported to `{dest}`: `transformers/`, `ct2-float16/`, `ct2-int8/` (each "
                "with RUN_CARD.md). The tuned model is in the Transcribe tab's model list.")

    export_btn.click(do_export, inputs=[run_pick, owner_in], outputs=[export_md],
                     api_name="whisper_ft_export", concurrency_limit=1)
