"""The Models tab: widgets in, `service` calls, `gr.Error` out."""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.context import Context

from studio import hub
from studio.sessions import owner_of
from studio.ui.widgets import job_panel, owner_state
from tabs.models import service
from tabs.models.catalog import ROLE_TITLES, ROLES

DISK_HEADERS = ["repository", "cache", "size", "files", "last used"]


def _fail(e: Exception) -> gr.Error:
    return gr.Error(str(e))


def _option_update(studio: Any, role: str) -> dict[str, Any]:
    """Choices (label with size and VRAM cost, source) of a role, the current one selected."""
    card = service.card_for(studio, role, fetch=False)
    alts = card.alternatives
    choices = [(service.option_label(a), a["source"]) for a in alts]
    value = card.source if any(a["source"] == card.source for a in alts) else None
    if value is None and card.source:
        choices = [(f"{card.title} (current)", card.source)] + choices
        value = card.source
    return {"choices": choices, "value": value}


def build_ui(studio: Any) -> None:
    offline = studio.settings.offline
    intro = ("Every model the studio uses, for the **{profile}** profile on {device}. Pick one "
             "per role, then **Download** it here: a background job with progress, speed, ETA "
             "and Cancel; a cancelled download resumes where its finished files end. Tabs use "
             "the model chosen here and say so when it is not on disk yet.")
    gr.Markdown(intro.format(profile=studio.profile, device=studio.device_summary()))
    if offline:
        gr.Markdown("**Offline (--offline):** only what is on disk is shown; the hub is never "
                    "contacted.")
    roles = [r for r in ROLES if r in studio.choices or service.catalog(studio).get(r)]
    first = service.cards(studio, fetch=False)  # no hub call while the page is built
    table = gr.HTML(service.cards_html(first), elem_id="models-cards")
    cards_json = gr.JSON(visible=False)
    with gr.Row():
        role = gr.Dropdown([(ROLE_TITLES[r], r) for r in roles], value=roles[0], label="Role",
                           scale=1)
        option = gr.Dropdown(label="Model (curated choices: size, VRAM on this budget)",
                             allow_custom_value=True, scale=3, **_option_update(studio, roles[0]))
    with gr.Row():
        custom = gr.Textbox(label="…or any hub id, local folder or single file",
                            placeholder="Qwen/Qwen2.5-7B-Instruct · org/repo:model.Q4_K_M.gguf"
                            " · /models/my-model · ~/sd/model.safetensors", scale=3)
        quant = gr.Dropdown(service.QUANTS, value="auto", label="Load as", scale=1)
    with gr.Row():
        use_btn = gr.Button("Use this model", scale=1)
        dl_btn = gr.Button("Download", variant="primary", scale=1, interactive=not offline)
        refresh_btn = gr.Button("Refresh", scale=1)
    message = gr.Markdown(elem_id="models-message")
    panel = job_panel(studio, hub.JOB_KIND, plot_keys=("speed_mib_s",), refresh_seconds=1.0)

    with gr.Accordion("Hub token (for gated models)", open=False):
        token_state = gr.Markdown(service.token(studio).describe())
        token_box = gr.Textbox(label="Paste a hub access token", type="password",
                               placeholder="hf_…", info="kept under the studio home, readable "
                               "only by you; also read from HF_TOKEN")
        with gr.Row():
            save_tok = gr.Button("Save token")
            forget_tok = gr.Button("Forget the saved token", variant="stop")
    with gr.Accordion("Disk", open=False):
        rows, line = service.disk_rows(studio)
        disk_line = gr.Markdown(line)
        disk_table = gr.Dataframe(headers=DISK_HEADERS, value=rows, interactive=False,
                                  label="The studio's models on disk")
        with gr.Row():
            del_repo = gr.Dropdown(label="Model to delete", choices=[r[0] for r in rows],
                                   value=None, allow_custom_value=True, scale=3)
            del_btn = gr.Button("Delete", variant="stop", scale=1)
        del_msg = gr.Markdown()
        refresh_disk = gr.Button("Scan the disk", size="sm")

    def options_for(role_value: str):
        return gr.update(**_option_update(studio, role_value))

    def do_cards():
        cs = service.cards(studio, fetch=not offline)
        return service.cards_html(cs), service.card_dicts(cs)

    def do_choose(role_value: str, option_value: str | None, custom_text: str, q: str):
        text = (custom_text or "").strip() or (option_value or "")
        try:
            msg = service.choose(studio, role_value, text, q)
        except (hub.HubError, ValueError) as e:
            raise _fail(e) from None
        rows, data = do_cards()
        return msg, rows, data, options_for(role_value), ""

    def do_download(role_value: str, option_value: str | None, custom_text: str, q: str,
                    secret: Any = None, request: gr.Request = None):
        text = (custom_text or "").strip() or (option_value or "")
        owner = owner_of(secret, request)
        try:
            run_id, msg = service.download(studio, role_value, text, q, owner=owner)
        except (hub.HubError, ValueError) as e:
            raise _fail(e) from None
        picker = panel.select(run_id, studio, owner) if run_id else gr.update()
        return msg, picker, *do_cards(), options_for(role_value)

    def do_disk():
        rows, line = service.disk_rows(studio)
        return line, rows, gr.update(choices=[r[0] for r in rows])

    def do_delete(repo: str | None):
        try:
            msg = service.delete(studio, repo or "")
        except (hub.HubError, ValueError) as e:
            raise _fail(e) from None
        return (msg, *do_disk())

    def do_save_token(text: str):
        try:
            msg = service.save_token(studio, text)
        except (hub.HubError, ValueError) as e:
            raise _fail(e) from None
        return "", f"{msg}  \n{service.token(studio).describe()}"

    card_outs = [table, cards_json]
    refresh_btn.click(do_cards, outputs=card_outs, api_name="models_cards")
    role.change(options_for, inputs=[role], outputs=[option], api_visibility="private")
    use_btn.click(do_choose, inputs=[role, option, custom, quant],
                  outputs=[message, table, cards_json, option, custom], api_name="models_choose")
    dl_btn.click(do_download, inputs=[role, option, custom, quant, owner_state()],
                 outputs=[message, panel.run_picker, *card_outs, option],
                 api_name="models_download")
    save_tok.click(do_save_token, inputs=[token_box], outputs=[token_box, token_state],
                   api_name="models_save_token")
    def do_forget_token():
        try:
            return service.forget_token(studio)
        except hub.HubError as e:
            raise _fail(e) from None

    forget_tok.click(do_forget_token, outputs=[token_state], api_name="models_forget_token")
    refresh_disk.click(do_disk, outputs=[disk_line, disk_table, del_repo], api_name="models_disk")
    del_btn.click(do_delete, inputs=[del_repo], outputs=[del_msg, disk_line, disk_table, del_repo],
                  api_name="models_delete")
    # Each page load shows the choices as they are now (another session may have changed them).
    Context.root_block.load(lambda r: (*do_cards(), options_for(r)), inputs=[role],
                            outputs=[*card_outs, option], api_visibility="private",
                            show_progress="hidden")
    # The cards follow downloads and loads; sizes come from the hub once, then from its cache.
    shown = gr.State(None)

    def cards_if_changed(last: Any):
        """The timer's refresh: nothing is sent while the cards are unchanged."""
        rows, data = do_cards()
        if rows == last:
            return gr.skip(), gr.skip(), last
        return rows, data, rows

    gr.Timer(5.0).tick(cards_if_changed, inputs=[shown], outputs=[*card_outs, shown],
                       api_visibility="private", show_progress="hidden", queue=False)
