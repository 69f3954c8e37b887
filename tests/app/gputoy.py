"""A test-only tab: a GPU-bound handler that records how many of its calls run at once."""

import threading
import time

TITLE = "GPU toy"


def build_ui(studio):
    import gradio as gr

    state = studio.extras.setdefault("gputoy", {"running": 0, "peak": 0,
                                                "lock": threading.Lock()})

    def work(tag: str) -> str:
        with state["lock"]:
            state["running"] += 1
            state["peak"] = max(state["peak"], state["running"])
        time.sleep(0.6)
        with state["lock"]:
            state["running"] -= 1
        return tag

    box = gr.Textbox()
    out = gr.Textbox()
    gr.Button("work").click(work, inputs=[box], outputs=[out], api_name="toy_gpu_work",
                            concurrency_id="gpu")
