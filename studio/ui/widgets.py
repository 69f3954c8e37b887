"""Shared Gradio builders: the owner of a page, the job panel every training tab reuses, and
the status bar parts.

Formatting of runs and ledgers lives in `studio.ui.views` (no Gradio) so it is tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.context import Context

from studio.sessions import OWNER_STORAGE_KEY, new_owner, owner_of, valid_secret
from studio.ui import views


# ----- the owner of a page (studio/sessions.py, "Ownership of work") -----------------------------
def owner_state(key_file: Any = None) -> gr.BrowserState:
    """THE owner state of the Blocks being built, made on the first call (build_app makes it at
    the top of the page; a tab built alone in a test app gets one where it first asks). A page
    load gives a browser without a valid secret a fresh one. Put it LAST in an event's inputs:
    scripts leave it out (`_optional_in_api`) and own their work by their session.

    `key_file` (first call only) keeps the key the browser's copy is encrypted with, so a
    restarted studio still reads it (a fresh key per process would give every browser a new
    owner, its runs and saved chats out of reach, at each restart)."""
    root = Context.root_block
    state = getattr(root, "_studio_owner_state", None)
    if state is None:
        state = gr.BrowserState(None, storage_key=OWNER_STORAGE_KEY,
                                secret=_browser_key(key_file))
        _optional_in_api(root)
        root._studio_owner_state = state
        on_page_load(lambda secret: gr.skip() if valid_secret(secret) else new_owner(),
                     inputs=[state], outputs=[state])
    return state


def _optional_in_api(blocks: Any) -> None:
    """A BrowserState is a required parameter of every endpoint it is an input of (it is not
    skipped like gr.State), so every script would have to send a secret. In the API description
    of these Blocks it is optional (default ""), so `gradio_client` sends "" and `owner_of`
    falls back to the script's session. Only the description: an initial value in the page
    config would make the page send it at load, before the browser's stored secret is read (a
    new owner at every reload); a BrowserState subclass would make Gradio write a .pyi stub
    next to this module at import."""
    plain = blocks.get_api_info

    def get_api_info(*args: Any, **kwargs: Any) -> Any:
        info = plain(*args, **kwargs)
        for group in ("named_endpoints", "unnamed_endpoints"):
            for endpoint in (info.get(group) or {}).values():
                for param in endpoint.get("parameters", []):
                    if param.get("component") == "Browserstate":
                        param["parameter_has_default"] = True
                        param["parameter_default"] = ""
        return info

    blocks.get_api_info = get_api_info


def _browser_key(key_file: Any) -> str | None:
    if key_file is None:
        return None
    from pathlib import Path

    path = Path(key_file)
    try:
        return path.read_text().strip() or None
    except OSError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = new_owner()
        path.touch(mode=0o600)
        path.write_text(key)
        return key


def run_error(run_id: str | None, e: Exception) -> gr.Error:
    """A refused run id as the user reads it: another session's run is "No run X." exactly like
    a missing one (`JobManager.check`); a read-only run says why."""
    if isinstance(e, KeyError):
        return gr.Error(f"No run {run_id}.")
    return gr.Error(str(e))


def check_run(studio: Any, run_id: str | None, owner: Any) -> dict[str, Any]:
    """`studio.jobs.check` for a handler: the run's meta, or a gr.Error (`run_error`)."""
    if not run_id:
        raise gr.Error("Pick a run first.")
    try:
        return studio.jobs.check(run_id, owner)
    except KeyError as e:
        raise run_error(run_id, e) from None


def fill_on_load(selector: Any, choices_fn: Any, default_fn: Any = None, *,
                 owned: bool = False) -> None:
    """Page (re)load fills `selector` with the choices as they are now and selects one, so that no
    action starts from an empty selector after a reload (the value a browser had is gone then).

    `choices_fn()` returns a Dropdown's choices (values or (label, value) pairs); `default_fn()`, if
    given, the value to select (kept only if it is among the choices); else the first choice.
    With `owned`, both are called with the page's owner (``owner_of``) and list only its work.
    Every tab's "after a reload the dropdown is empty" case uses this one helper."""

    def choose(*owner: Any):
        choices = list(choices_fn(*owner))
        values = [c[1] if isinstance(c, (tuple, list)) else c for c in choices]
        value = default_fn(*owner) if default_fn is not None else None
        if value not in values:
            value = values[0] if values else None
        return gr.update(choices=choices, value=value)

    if not owned:
        on_page_load(choose, outputs=[selector])
        return

    def fill(secret: Any = None, request: gr.Request = None):
        return choose(owner_of(secret, request))

    on_page_load(fill, inputs=[owner_state()], outputs=[selector])


def owned_choices(selector: Any, choices_fn: Any) -> None:
    """Keep `selector`'s choices to the page owner's work: renewed on page load and when it is
    opened (`choices_fn(owner)`); the value stays as it is. For pickers of a run's outputs (an
    adapter, a tuned model) whose build-time choices, in the page config everyone downloads,
    are the shared ones only."""

    def renew(secret: Any = None, request: gr.Request = None):
        return gr.update(choices=choices_fn(owner_of(secret, request)))

    selector.focus(renew, inputs=[owner_state()], outputs=[selector], api_visibility="private",
                   queue=False)
    on_page_load(renew, inputs=[owner_state()], outputs=[selector])


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
    # (run_id, seen, secret, request) -> outputs + [picker, seen]; gr.skip() when unchanged
    refresh: Any = None

    def select(self, run_id: str, studio: Any = None, owner: Any = None) -> Any:
        """The update a tab's Start handler returns for `run_picker` after submitting a run:
        the choices are `owner`'s runs (and the shared ones)."""
        choices = views.run_choices(studio.jobs.list_runs(self.kind, owner=owner)) \
            if studio else None
        if choices is None:
            return gr.update(value=run_id)
        return gr.update(choices=choices, value=run_id)


LOG_LINES = 14  # the log box's height: it shows the newest lines, all of them in view


def job_panel(studio: Any, kind: str, plot_keys: tuple[str, ...] = ("train_loss", "val_loss"),
              refresh_seconds: float = 1.0) -> JobPanel:
    """Run picker, status, progress with ETA, live metrics plot, log tail, artifacts, Cancel and
    Resume, for the runs of one `kind`. Refreshes itself with a gr.Timer while visible.

    Every handler takes the page's owner (`owner_state`): the picker lists its runs and the
    shared ones; another session's run id is answered as a missing one."""
    owner_in = owner_state()

    def choices(owner: Any):
        return views.run_choices(studio.jobs.list_runs(kind, owner=owner))

    def newest(owner: Any):
        runs = studio.jobs.list_runs(kind, owner=owner)
        return runs[0].id if runs else None

    with gr.Group():
        with gr.Row():
            # the page config is everyone's: shared runs only (the page's own come on load)
            picker = gr.Dropdown(label="Run", choices=choices(None), value=None, scale=4,
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
    fill_on_load(picker, choices, newest, owned=True)

    def show(run_id: str | None, owner: Any):
        if not run_id:
            return "No run selected.", views.progress_html(None), None, "", None
        try:
            v = studio.jobs.view(run_id, log_lines=LOG_LINES, owner=owner)
        except KeyError:  # gone, or another session's: the same answer
            return f"No run {run_id}.", views.progress_html(None), None, "", None
        return (views.run_markdown(v), views.progress_html(v),
                views.metrics_frame(v, plot_keys), v.log_tail, views.output_files(v))

    def refresh(run_id: str | None, secret: Any = None, request: gr.Request = None):
        return show(run_id, owner_of(secret, request))

    outputs = [status, progress, plot, log, files]
    seen = gr.State(None)

    def run_status(run_id: str | None, owner: Any) -> str | None:
        try:
            return studio.jobs.view(run_id, log_lines=0, owner=owner).status if run_id else None
        except KeyError:
            return None

    def refresh_if_changed(run_id: str | None, last: Any, secret: Any = None,
                           request: gr.Request = None):
        """The timer's refresh: nothing is sent while the run's files are unchanged (five
        panels re-sent everything every second). When the run's status changed (it ended, it
        was resumed), the picker's labels are renewed too, so they never say "running" about
        a run that has ended."""
        owner = owner_of(secret, request)
        key = studio.jobs.fingerprint(run_id) \
            if run_id and studio.jobs.owns(run_id, owner) else None
        last_key, last_status = last if isinstance(last, (tuple, list)) and len(last) == 2 \
            else (last, None)
        if key is not None and _same(key, last_key):
            return (*[gr.skip()] * len(outputs), gr.skip(), last)
        status_now = run_status(run_id, owner)
        labels = gr.skip()
        if status_now != last_status:
            labels = gr.update(choices=choices(owner))
        return (*show(run_id, owner), labels, (key, status_now))

    timer.tick(refresh_if_changed, inputs=[picker, seen, owner_in],
               outputs=[*outputs, picker, seen],
               api_visibility="private", show_progress="hidden", queue=False)
    picker.change(refresh, inputs=[picker, owner_in], outputs=outputs,
                  api_name=f"{kind}_job_view")
    def renew(secret: Any = None, request: gr.Request = None):
        return gr.update(choices=choices(owner_of(secret, request)))

    picker.focus(renew, inputs=[owner_in], outputs=[picker], api_visibility="private",
                 queue=False)

    def do_cancel(run_id: str | None, secret: Any = None, request: gr.Request = None):
        if not run_id:
            raise gr.Error("Pick a run to cancel.")
        owner = owner_of(secret, request)
        try:
            state = studio.jobs.cancel(run_id, owner=owner)
        except (KeyError, PermissionError) as e:
            raise run_error(run_id, e) from None
        gr.Info(f"Run {run_id}: {state}")
        return show(run_id, owner)

    def do_resume(run_id: str | None, secret: Any = None, request: gr.Request = None):
        if not run_id:
            raise gr.Error("Pick a run to resume.")
        owner = owner_of(secret, request)
        try:
            studio.jobs.resume(run_id, owner=owner)
        except (ValueError, KeyError, PermissionError) as e:
            raise run_error(run_id, e) from None
        gr.Info(f"Run {run_id} queued to resume from its last checkpoint.")
        return show(run_id, owner)

    cancel.click(do_cancel, inputs=[picker, owner_in], outputs=outputs,
                 api_name=f"{kind}_cancel")
    resume.click(do_resume, inputs=[picker, owner_in], outputs=outputs,
                 api_name=f"{kind}_resume")
    return JobPanel(kind=kind, run_picker=picker, status=status, progress=progress, plot=plot,
                    log=log, files=files, cancel=cancel, resume=resume,
                    refresh=refresh_if_changed)


def _same(a: Any, b: Any) -> bool:
    """Fingerprints compared after a trip through the browser (tuples come back as lists)."""
    return a is not None and b is not None and list(a) == list(b)
