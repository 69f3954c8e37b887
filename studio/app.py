"""build_app(studio) -> gr.Blocks: header, one tab per project, and the status area."""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from studio.config import format_bytes
from studio.jobs import ALL
from studio.security import LockedDoor
from studio.sessions import owner_of
from studio.ui import views
from studio.ui.examples import logo_svg
from studio.ui.lean import LeanBlocks
from studio.ui.widgets import owner_state, run_error

log = logging.getLogger("studio.app")

# In the order they appear. A tab whose package is not there yet is left out.
TAB_MODULES = [
    "tabs.chat",
    "tabs.rag",
    "tabs.qlora",
    "tabs.yolo",
    "tabs.sd",
    "tabs.whisper",
    "tabs.whisper_ft",
    "tabs.vlm",
    "tabs.tinygpt",
    "tabs.models",
]

ASSETS = Path(__file__).resolve().parent.parent / "assets"


class BrokenTab:
    """Stands in for a tab package that exists but failed to import: an error tab that says
    why, instead of a tab that silently vanishes."""

    def __init__(self, name: str, reason: str):
        self.__name__ = name
        self.TITLE = f"⚠ {name.rsplit('.', 1)[-1]}"
        self.reason = reason

    def build_ui(self, studio: Any) -> None:
        gr.Markdown(f"### This tab failed to load\n`{self.__name__}`: {self.reason}\n\n"
                    "The rest of the studio works. The full traceback is in the studio's log.",
                    elem_classes=["studio-broken-tab"])


def available_tabs(modules: list[str] | None = None) -> list[Any]:
    """Import each tab package that exists. A package that is not there yet is left out; one
    that exists but fails to import (a missing module inside it, a syntax error, a package
    without TITLE/build_ui) becomes a `BrokenTab` with the reason, and is logged."""
    found: list[Any] = []
    for name in TAB_MODULES if modules is None else modules:
        try:
            if importlib.util.find_spec(name) is None:
                continue  # not built yet
        except (ImportError, ValueError):
            continue
        try:
            mod = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - one broken tab must not take the studio down
            log.exception("tab %s failed to import", name)
            found.append(BrokenTab(name, f"{type(e).__name__}: {e}"))
            continue
        if not hasattr(mod, "TITLE") or not callable(getattr(mod, "build_ui", None)):
            log.warning("tab %s has no TITLE/build_ui", name)
            found.append(BrokenTab(name, "the package has no TITLE or build_ui"))
            continue
        found.append(mod)
    return found


def status_snapshot(studio: Any, owner: Any = ALL) -> dict[str, Any]:
    """What the status area shows, as plain data (also served as `studio_status`); with an
    `owner`, another session's runs in the queue without their ids and titles."""
    m = studio.models
    runs = views.seen_by(studio.jobs.queue(), owner)
    return {
        "device": studio.device_summary(),
        "budget": m.budget,
        "used": m.used(),
        "allocated": studio.probe.allocated(),
        "ledger": [
            {"key": r.key, "title": r.title, "state": r.state, "bytes": r.size,
             "pinned": r.pinned}
            for r in m.loaded()
        ],
        "queue": [{"id": v.id, "title": v.title, "status": v.status,
                   "note": views.queue_note(v, runs)} for v in runs],
        "history": m.history[-8:],
    }


def _budget_line(studio: Any) -> str:
    m = studio.models
    used = m.used()
    pct = 100 * used / m.budget if m.budget else 0
    return (f"**Device:** {studio.device_summary()}  \n"
            f"**In use:** {format_bytes(used)} of {format_bytes(m.budget)} ({pct:.0f}%)")


# Table headers wrap between words, never inside one ("chun ks"); long cells wrap.
TABLE_CSS = """
table th, table th * { word-break: keep-all !important; overflow-wrap: normal !important;
                       hyphens: manual !important; }
#studio-ledger table, #studio-queue table { table-layout: auto; }
"""

LEDGER_HEADERS = ["key", "model", "where", "size", "state", "last used"]
# the key column is the narrowest share: a long key wraps instead of pushing the rest off
LEDGER_WIDTHS = ["18%", "30%", "12%", "14%", "13%", "13%"]


def model_choices(studio: Any, current: str | None) -> Any:
    """The Unload dropdown's choices now; a selected key whose model is gone is dropped."""
    keys = [r.key for r in studio.models.loaded() if r.state != "reserved"]
    return gr.update(choices=keys, value=current if current in keys else None)


def job_choices(studio: Any, current: str | None, owner: Any = ALL) -> Any:
    """The queue's Cancel dropdown: `owner`'s running and queued runs; a finished one is
    dropped."""
    runs = [v for v in studio.jobs.queue() if owner is ALL or v.owner == owner]
    ids = [(f"{v.title} · {v.status}", v.id) for v in runs]
    return gr.update(choices=ids, value=current if current in [i for _, i in ids] else None)


def build_status(studio: Any) -> None:
    """The status area under every tab: device, budget, memory ledger, job queue."""
    budget = gr.Markdown(_budget_line(studio), elem_id="studio-budget")  # always visible
    with gr.Accordion("GPU memory and jobs", open=False, elem_id="studio-status"):
        ledger = gr.Dataframe(
            headers=LEDGER_HEADERS, column_widths=LEDGER_WIDTHS, wrap=True,
            value=views.ledger_rows(studio.models.loaded()), interactive=False,
            label=views.ledger_label(getattr(studio.probe, "device", "cpu")),
            elem_id="studio-ledger",
        )
        with gr.Row():
            unload_key = gr.Dropdown(label="Model", choices=[], scale=3,
                                     allow_custom_value=True)
            unload_btn = gr.Button("Unload", scale=1)
            free_btn = gr.Button("Free all", variant="stop", scale=1)
        result = gr.Markdown("")
        queue = gr.Dataframe(headers=["run", "title", "status", "progress", "ETA", "note"],
                             value=views.queue_rows(studio.jobs.queue(), None),
                             interactive=False,
                             wrap=True, label="Job queue", elem_id="studio-queue")
        with gr.Row():
            job_pick = gr.Dropdown(label="Queued or running run", choices=[], scale=3,
                                   allow_custom_value=True)
            job_cancel = gr.Button("Cancel run", variant="stop", scale=1)
        history = gr.Textbox(label="Model manager decisions", lines=3, interactive=False)

    def refresh(current_key: str | None, current_job: str | None, secret: Any = None,
                request: gr.Request = None):
        rows = studio.models.loaded()
        owner = owner_of(secret, request)
        return (_budget_line(studio), views.ledger_rows(rows),
                model_choices(studio, current_key),
                views.queue_rows(studio.jobs.queue(), owner),
                job_choices(studio, current_job, owner), "\n".join(studio.models.history[-6:]))

    def unload(key: str | None):
        if not key:
            raise gr.Error("Pick a model to unload.")
        if not studio.models.evict(key):
            raise gr.Error(f"{key} is in use by a running request; try again when it finishes.")
        return f"Unloaded {key}."

    def free_all():
        used_before = studio.models.used()
        before, after, kept = studio.models.evict_all()
        msg = (f"Freed: models {format_bytes(used_before)} → "
               f"{format_bytes(studio.models.used())}")
        if before is not None:
            msg += f"; GPU allocated {format_bytes(before)} → {format_bytes(after)}"
        msg += "."
        if kept:
            msg += f" Still in use (not unloaded): {', '.join(kept)}."
        return msg

    def cancel_job(run_id: str | None, secret: Any = None, request: gr.Request = None):
        if not run_id:
            raise gr.Error("Pick a queued or running run to cancel.")
        try:
            state = studio.jobs.cancel(run_id, owner=owner_of(secret, request))
        except (KeyError, PermissionError) as e:
            raise run_error(run_id, e) from None
        return f"Run {run_id}: {state}."

    def own_choices(run_id: str | None, secret: Any = None, request: gr.Request = None):
        return job_choices(studio, run_id, owner_of(secret, request))

    owner = owner_state()
    outs = [budget, ledger, unload_key, queue, job_pick, history]
    gr.Timer(2.0).tick(refresh, inputs=[unload_key, job_pick, owner], outputs=outs,
                       api_visibility="private", queue=False, show_progress="hidden")
    after_unload = dict(fn=lambda key: model_choices(studio, key), inputs=[unload_key],
                        outputs=[unload_key], api_visibility="private", queue=False,
                        show_progress="hidden")
    unload_btn.click(unload, inputs=[unload_key], outputs=[result],
                     api_name="studio_unload").then(**after_unload)
    free_btn.click(free_all, outputs=[result], api_name="studio_free_all").then(**after_unload)
    job_cancel.click(cancel_job, inputs=[job_pick, owner], outputs=[result],
                     api_name="studio_cancel_job").then(
        own_choices, inputs=[job_pick, owner], outputs=[job_pick],
        api_visibility="private", queue=False, show_progress="hidden")

    def snapshot(request: gr.Request = None):
        # no secret input: a raw HTTP call sends no data; a script is its session
        return status_snapshot(studio, owner_of(None, request))

    status_json = gr.JSON(visible=False)
    gr.Button("status", visible=False).click(snapshot, outputs=[status_json],
                                             api_name="studio_status", queue=False)


def build_app(studio: Any, tab_modules: list[str] | None = None) -> gr.Blocks:
    # a request waiting for memory (a job's, another request's) tells its own session why
    studio.models.on_wait = lambda msg: gr.Info(msg, duration=10)
    with LeanBlocks(title="OneGPU Studio") as app:  # lean /config and /info: studio/ui/lean.py
        # the page's owner: one per page, made here outside any tab, before the tabs ask for
        # it; its encryption key kept under the home, so a restart keeps every browser's owner
        owner_state(key_file=studio.settings.home / "browser-state.key")
        with gr.Row(elem_id="studio-logo-row"):  # logo and styles: assets/
            gr.HTML(logo_svg(), elem_id="studio-logo", scale=0, min_width=48, container=False)
            gr.Markdown(f"# OneGPU Studio\n{studio.device_summary()}", elem_id="studio-header")
        warnings = doctor_banner(studio.extras.get("doctor", []))
        if warnings:
            gr.Markdown(warnings, elem_id="studio-warnings")
        tabs = available_tabs(tab_modules)
        if not tabs:
            gr.Markdown("No tabs are installed.")
        with gr.Tabs() as tab_set:
            studio.extras.setdefault("ui", {})["tabs"] = tab_set  # for cross-tab buttons
            build_tabs(studio, tabs)
        build_status(studio)
    from studio.ui.errors import guard_app

    return guard_app(app)  # no handler of any tab ends in a bare "Error"


def doctor_banner(problems: list[Any]) -> str:
    """The start-up checks' problems (studio.doctor) as the warning banner atop the page."""
    if not problems:
        return ""
    lines = [f"- ⚠️ **{c.name}**: {c.detail}" for c in problems]
    return "\n".join(lines + ["", "`./studio.sh --doctor` describes this machine in full."])


def build_tabs(studio: Any, tabs: list[Any]) -> None:
    """One gr.Tab per tab package, with the package name as its id (cross-tab buttons select
    a tab by it)."""
    for mod in tabs:
        with gr.Tab(mod.TITLE, id=mod.__name__):
            try:
                mod.build_ui(studio)
            except Exception as e:  # one broken tab must not take the studio down
                log.exception("tab %s failed to build", mod.__name__)
                gr.Markdown(f"⚠️ This tab failed to start: `{e}`")


def public_api_names(app: gr.Blocks) -> list[str]:
    """The api_names a script can call with gradio_client (listed in the README)."""
    fns = app.fns.values() if isinstance(app.fns, dict) else app.fns
    return sorted({f.api_name for f in fns
                   if f.api_name and getattr(f, "api_visibility", "public") == "public"})


def configure_queue(app: gr.Blocks) -> gr.Blocks:
    """The queue the studio serves with; launch.py and the app-level tests both use it.

    Handlers with ``concurrency_id="gpu"`` run at most `GPU_CONCURRENCY` at a time (what one
    card does well, studio/sessions.py); light handlers up to 4 each.
    """
    from studio.sessions import GPU_CONCURRENCY

    fns = app.fns.values() if isinstance(app.fns, dict) else app.fns
    for fn in fns:
        if fn.concurrency_id == "gpu":
            fn.concurrency_limit = GPU_CONCURRENCY
    return app.queue(default_concurrency_limit=4)


def launch_kwargs(studio: Any) -> dict[str, Any]:
    s = studio.settings
    css_path = ASSETS / "studio.css"
    return {
        "server_name": s.host,
        "server_port": s.port,
        "auth": s.auth or None,
        "auth_message": "OneGPU Studio: sign in" if s.auth else None,
        "allowed_paths": [str(s.home), str(ASSETS)],  # the tabs' gr.Examples read assets/
        "css_paths": [str(css_path)] if css_path.exists() else None,
        "css": TABLE_CSS,
        "footer_links": ["api", "settings"] if not s.auth else ["settings"],
        # Behind a login nothing describes the API to a visitor who has not signed in, and
        # wrong passwords are slowed per client (studio/security.py).
        "app_kwargs": {"middleware": [Middleware(LockedDoor)], "openapi_url": None,
                       "docs_url": None, "redoc_url": None},
    }
