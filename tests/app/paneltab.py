"""A test-only tab for the shared job panel: its job saves a folder (an adapter, as QLoRA's
does), writes many log lines and can be cancelled and resumed."""

import json
import time

TITLE = "Panel toy"
KIND = "paneltoy"


def adapter_job(config, report):
    """Counts to `steps` (a checkpoint every 2), writing `adapter/` as it goes, one log line a
    step; resumes from its last checkpoint."""
    start = 0
    last = report.last_checkpoint()
    if last is not None:
        start = json.loads(last[0].read_text())["step"]
    adapter = report.run_dir / "adapter"
    adapter.mkdir(exist_ok=True)
    for i in range(config.get("preamble", 30)):
        report.log(f"preamble line {i}")
    for step in range(start + 1, config["steps"] + 1):
        if report.should_stop():
            break
        time.sleep(config.get("sleep", 0.05))
        report.progress(step, config["steps"], f"step {step}")
        report.metrics(step, train_loss=1.0 / step)
        report.log(f"log line of step {step}")
        (adapter / "adapter_config.json").write_text(json.dumps({"step": step}))
        (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 1000 * step)
        if step % 2 == 0:
            ck = report.run_dir / "ckpt.json"
            ck.write_text(json.dumps({"step": step}))
            report.checkpoint(ck, step)
            report.artifact(adapter, kind="model", label="adapter so far")
    report.artifact(adapter, kind="model", label="adapter")
    (report.run_dir / "results.json").write_text("{}")
    report.artifact(report.run_dir / "results.json", kind="file", label="results")
    report.log("the last line of the run")


def build_ui(studio):
    import gradio as gr

    from studio.sessions import owner_of
    from studio.ui.widgets import job_panel, owner_state

    steps = gr.Number(value=6, label="steps", precision=0)
    sleep = gr.Number(value=0.05, label="sleep")
    start = gr.Button("Start")
    panel = job_panel(studio, kind=KIND)

    # (no `from __future__ import annotations` here: `gr` is imported in this function, and
    # Gradio must resolve the gr.Request annotation to fill it)
    def go(n, s, secret, request: gr.Request):
        owner = owner_of(secret, request)
        rid = studio.jobs.submit(KIND, "tests.app.paneltab:adapter_job",
                                 {"steps": int(n), "sleep": float(s)}, title="Panel toy run",
                                 owner=owner)
        return panel.select(rid, studio, owner)

    start.click(go, inputs=[steps, sleep, owner_state()], outputs=[panel.run_picker],
                api_name="paneltoy_start")
