"""A test-only tab: Start submits a toy job and the shared job panel follows it."""

TITLE = "Toy"


def build_ui(studio):
    import gradio as gr

    from studio.sessions import owner_of
    from studio.ui.widgets import job_panel, owner_state

    steps = gr.Number(value=200, label="steps", precision=0)
    start = gr.Button("Start")
    panel = job_panel(studio, kind="toy")

    def go(n, secret, request: gr.Request):  # the run is the page's (or the script's)
        owner = owner_of(secret, request)
        rid = studio.jobs.submit("toy", "tests.jobs.toy:count",
                                 {"steps": int(n), "sleep": 0.05, "every": 3}, title="Toy run",
                                 owner=owner)
        return panel.select(rid, studio, owner)

    start.click(go, inputs=[steps, owner_state()], outputs=[panel.run_picker],
                api_name="toy_start")
