"""A test-only tab: Start submits a toy job and the shared job panel follows it."""

TITLE = "Toy"


def build_ui(studio):
    import gradio as gr

    from studio.ui.widgets import job_panel

    steps = gr.Number(value=200, label="steps", precision=0)
    start = gr.Button("Start")
    panel = job_panel(studio, kind="toy")

    def go(n):
        rid = studio.jobs.submit("toy", "tests.jobs.toy:count",
                                 {"steps": int(n), "sleep": 0.05, "every": 3}, title="Toy run")
        return panel.select(rid, studio)

    start.click(go, inputs=[steps], outputs=[panel.run_picker], api_name="toy_start")
