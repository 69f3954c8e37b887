"""The QLoRA tab builds inside Blocks and exposes its actions under stable api names."""

from __future__ import annotations


def test_tab_builds_with_its_api_names(studio):
    import gradio as gr

    import tabs.qlora as tab

    with gr.Blocks() as demo:
        with gr.Tab(tab.TITLE):
            tab.build_ui(studio)
    names = {d.api_name for d in demo.fns.values()}
    assert {"qlora_validate", "qlora_estimate", "qlora_train", "qlora_compare", "qlora_export",
            "qlora_chat", "qlora_cancel", "qlora_resume"} <= names
