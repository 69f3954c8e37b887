"""Shared Gradio builders: the job panel every training tab reuses, and the status bar parts.

Formatting of runs and ledgers lives in `studio.ui.views` (no Gradio) so it is tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.context import Context

from studio.ui import views


def fill_on_load(selector: Any, choices_fn: Any, default_fn: Any = None) -> None:
    """Page (re)load fills `selector` with the choices as they are now and selects one, so that no
    action starts from an empty selector after a reload (the value a browser had is gone then).

    `choices_fn()` returns a Dropdown's choices (values or (label, value) pairs); `default_fn()`, if
    given, the value to select (kept only if it is among the choices); else the first choice.
    Every tab's "after a reload the dropdown is empty" case uses this one helper."""

    def fill():
        choices = list(choices_fn())
        values = [c[1] if isinstance(c, (tuple, list)) else c for c in choices]
        value = default_fn() if default_fn is not None else None
        if value not in values:
            value = values[0] if values else None
        return gr.update(choices=choices, value=value)

    on_page_load(fill, outputs=[selector])


def on_page_load(fn: Any, outputs: list[Any], inputs: list[Any] | None = None) -> None:
    """Run `fn` at each page (re)load to refresh `outputs`: private (not an API endpoint),
    no spinner, outside the queue. The one place tabs hook their "as it is now" refreshes."""
    Context.root_block.load(fn, inputs=inputs, outputs=outputs, api_visibility="private",
                            show_progress="hidden", queue=False)


@dataclass
class JobPanel:
    """Handles to the components of one job panel."""

    kind: str
    run_picker: gr.Dropdown
    status: gr.Markdown
    progress: gr.HTML
    plot: gr.LinePlot
    log: gr.Textbox
    files: gr.File
    cancel: gr.Button
    resume: gr.Button
    refresh: Any = None  # (run_id, seen) -> outputs + [seen]; gr.skip() when nothing changed

    def select(self, run_id: str, studio: Any = None) -> Any:
        """The update a tab's Start handler returns for `run_picker` after submitting a run."""
        choices = views.run_choices(studio.jobs.list_runs(self.kind)) if studio else None
        if choices is None:
            return gr.update(value=run_id)
        return gr.update(choices=choices, value=run_id)


LOG_LINES = 14  # the log box's height: it shows the newest lines, all of them in view


def job_panel(studio: Any, kind: str, plot_keys: tuple[str, ...] = ("train_loss", "val_loss"),
              refresh_seconds: float = 1.0) -> JobPanel:
    """Run picker, status, progress with ETA, live metrics plot, log tail, artifacts, Cancel and
    Resume, for the runs of one `kind`. Refreshes itself with a gr.Timer while visible."""

    def choices():
        return views.run_choices(studio.jobs.list_runs(kind))

    def newest():
        runs = studio.jobs.list_runs(kind)
        return runs[0].id if runs else None

    with gr.Group():
        with gr.Row():
            picker = gr.Dropdown(label="Run", choices=choices(), value=None, scale=4,
                                 allow_custom_value=True)  # scripts pass run ids
            cancel = gr.Button("Cancel", variant="stop", scale=1)
            resume = gr.Button("Resume", scale=1)
        status = gr.Markdown("No run selected.")
        progress = gr.HTML(views.progress_html(None))
        plot = gr.LinePlot(x="step", y="value", color="series", title="Metrics", height=260,
                           label="Metrics")
        log = gr.Textbox(label="Log (last lines)", lines=8, max_lines=LOG_LINES,
                         autoscroll=True, interactive=False, elem_classes=["studio-log"])
        # Files only: a folder artifact (an adapter, a saved model) is offered as one zip
        files = gr.File(label="Outputs", file_count="multiple", interactive=False)
    timer = gr.Timer(refresh_seconds)
    # after a reload the picker lists the runs as they are now, the newest selected
    fill_on_load(picker, choices, newest)

    def refresh(run_id: str | None):
        if not run_id:
            return "No run selected.", views.progress_html(None), None, "", None
        try:
            v = studio.jobs.view(run_id, log_lines=LOG_LINES)
        except KeyError:
            return f"Run {run_id} no longer exists.", views.progress_html(None), None, "", None
        return (views.run_markdown(v), views.progress_html(v),
                views.metrics_frame(v, plot_keys), v.log_tail, views.output_files(v))

    outputs = [status, progress, plot, log, files]
    seen = gr.State(None)

    def run_status(run_id: str | None) -> str | None:
        try:
            return studio.jobs.view(run_id, log_lines=0).status if run_id else None
        except KeyError:
            return None

    def refresh_if_changed(run_id: str | None, last: Any):
        """The timer's refresh: nothing is sent while the run's files are unchanged (five
        panels re-sent everything every second). When the run's status changed (it ended, it
        was resumed), the picker's labels are renewed too, so they never say "running" about
        a run that has ended."""
        key = studio.jobs.fingerprint(run_id) if run_id else None
        last_key, last_status = last if isinstance(last, (tuple, list)) and len(last) == 2 \
            else (last, None)
        if key is not None and _same(key, last_key):
            return (*[gr.skip()] * len(outputs), gr.skip(), last)
        status_now = run_status(run_id)
        labels = gr.skip()
        if status_now != last_status:
            labels = gr.update(choices=choices())
        return (*refresh(run_id), labels, (key, status_now))

    timer.tick(refresh_if_changed, inputs=[picker, seen], outputs=[*outputs, picker, seen],
               api_visibility="private", show_progress="hidden", queue=False)
    picker.change(refresh, inputs=[picker], outputs=outputs, api_name=f"{kind}_job_view")
    picker.focus(lambda: gr.update(choices=choices()), outputs=[picker],
                 api_visibility="private", queue=False)

    def do_cancel(run_id: str | None):
        if not run_id:
            raise gr.Error("Pick a run to cancel.")
        state = studio.jobs.cancel(run_id)
        gr.Info(f"Run {run_id}: {state}")
        return refresh(run_id)

    def do_resume(run_id: str | None):
        if not run_id:
            raise gr.Error("Pick a run to resume.")
        try:
            studio.jobs.resume(run_id)
        except (ValueError, KeyError) as e:
            raise gr.Error(str(e)) from None
        gr.Info(f"Run {run_id} queued to resume from its last checkpoint.")
        return refresh(run_id)

    cancel.click(do_cancel, inputs=[picker], outputs=outputs, api_name=f"{kind}_cancel")
    resume.click(do_resume, inputs=[picker], outputs=outputs, api_name=f"{kind}_resume")
    return JobPanel(kind=kind, run_picker=picker, status=status, progress=progress, plot=plot,
                    log=log, files=files, cancel=cancel, resume=resume,
                    refresh=refresh_if_changed)


def _same(a: Any, b: Any) -> bool:
    """Fingerprints compared after a trip through the browser (tuples come back as lists)."""
    return a is not None and b is not None and list(a) == list(b)
