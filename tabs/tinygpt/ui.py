"""The Tiny GPT lab tab: pick a corpus and tokenizer, shape a model, train it as a job, compare
runs, and generate text from one. Widgets in, `service` / `compare` calls, `gr.Error` out."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from studio.models import BudgetExceeded
from studio.sessions import owner_of
from studio.ui.examples import prompts
from studio.ui.widgets import fill_on_load, job_panel, on_page_load, owner_state, run_error
from tabs.tinygpt import service
from tabs.tinygpt.compare import COLUMNS, chart_frame, compare_runs
from tabs.tinygpt.compare import loss_curves as compare_loss_curves
from tabs.tinygpt.config import TinyGPTConfig, default_for, default_of, help_of, label_of
from tabs.tinygpt.model import POS_SCHEMES

CORPUS_CHOICES = [("Python standard library (offline)", "stdlib"),
                  ("Upload: text file or zip", "upload"),
                  ("Folder under the studio home (e.g. RAG knowledge base)", "folder")]
CACHE_CHOICES = ["on", "off", "both (compare speed)"]


def _num(name: str, device: str = "cuda", **kw: Any) -> gr.Number:
    return gr.Number(value=default_for(name, device), label=label_of(name),
                     info=help_of(name) or None, **kw)


def build_ui(studio: Any) -> None:
    """The tab's widgets and handlers; called inside ``with gr.Tab(TITLE):``."""

    def _tables(owner: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The comparison table and its chart, from `owner`'s Tiny GPT runs (and shared ones)."""
        df = compare_runs(service.runs(studio, owner))
        return df, chart_frame(df)

    # Every handler names its owner (the last input, optional for scripts: their session).
    owner = owner_state()

    gr.Markdown("Train a 0.1–10M parameter transformer from scratch and see what its parts do: "
                "positional scheme, context, size, tokenizer. Runs are jobs: close the browser "
                "and come back.")
    with gr.Row():
        with gr.Column(scale=1):
            gr.Markdown("### Corpus and tokenizer")
            corpus = gr.Radio(CORPUS_CHOICES, value="stdlib", label=label_of("corpus"),
                              info=help_of("corpus"))
            upload = gr.File(label="Text file or zip", file_count="single", visible=False,
                             type="filepath")
            folder = gr.Textbox(label="Folder under the studio home", visible=False,
                                placeholder="indexes/my-knowledge-base",
                                info=f"relative to {studio.settings.home}")
            max_chars = _num("max_corpus_chars", precision=0, minimum=1000)
            tokenizer = gr.Radio([("characters", "char"), ("byte-level BPE", "bpe")],
                                 value="char", label=label_of("tokenizer"))
            vocab = gr.Slider(260, 16384, value=default_of("vocab_size"), step=4,
                              label=label_of("vocab_size"), visible=False)
            preview_btn = gr.Button("Preview corpus and tokenizer")
            preview_md = gr.Markdown()
        with gr.Column(scale=1):
            gr.Markdown("### Model and training")
            dev = studio.device
            if dev != "cuda":
                gr.Markdown("No GPU here: the settings start small (a few minutes on a CPU). "
                            "On a GPU the same tab starts with a 3x longer run of 4x the tokens "
                            "a step.")
            pos = gr.Radio(list(POS_SCHEMES), value=default_of("pos"), label=label_of("pos"),
                           info=help_of("pos"))
            with gr.Row():
                n_layer = _num("n_layer", precision=0, minimum=1, maximum=24)
                n_head = _num("n_head", precision=0, minimum=1, maximum=32)
                n_embd = _num("n_embd", precision=0, minimum=8, maximum=1024)
            with gr.Row():
                block_size = _num("block_size", dev, precision=0, minimum=8, maximum=2048)
                dropout = _num("dropout", minimum=0, maximum=0.9)
            with gr.Row():
                max_steps = _num("max_steps", dev, precision=0, minimum=1)
                batch_size = _num("batch_size", dev, precision=0, minimum=1)
                lr = _num("learning_rate", minimum=1e-6)
            device = gr.Radio(["auto", "cpu", "cuda"], value="auto", label=label_of("device"),
                              info=help_of("device"))
            start = gr.Button("Start training", variant="primary")
    panel = job_panel(studio, kind=service.KIND,
                      plot_keys=("train_loss", "val_loss"))

    gr.Markdown("### Compare runs")
    compare_btn = gr.Button("Refresh comparison")
    # built once for every session: the shared runs only; a page load shows the caller's
    first_table, first_chart = _tables(None)  # "Refresh comparison" updates them
    table = gr.Dataframe(value=first_table, headers=COLUMNS, wrap=True,
                         label="Runs (best validation perplexity first); val_ppl_2x = "
                         "perplexity at twice the training context")
    chart = gr.BarPlot(value=first_chart, x="run · measure", y="perplexity",
                       color="measure",
                       title="Validation perplexity at 1x and 2x the training context",
                       x_label_angle=-30, height=320)

    with gr.Row():
        curve_metric = gr.Radio([("validation loss", "val_loss"), ("training loss", "train_loss")],
                                value="val_loss", label="Loss curves of every run", scale=1)
    curves = gr.LinePlot(value=compare_loss_curves(service.runs(studio, None)),
                         x="step", y="value", color="run", height=320,
                         title="Loss over training, one line per run", label="Loss curves")
    with gr.Row():
        del_run = gr.Dropdown(label="Run to delete", choices=_finished(studio, None), scale=3,
                              allow_custom_value=True)
        del_btn = gr.Button("Delete run", variant="stop", scale=1)
    del_md = gr.Markdown()

    gr.Markdown("### Generate")
    with gr.Row():
        # custom values: a script may name a run trained after this page was built
        gen_run = gr.Dropdown(label="Trained run", choices=service.trained_runs(studio, None),
                              scale=3, allow_custom_value=True)
        refresh_runs = gr.Button("↻", scale=0, min_width=48)
    prompt = gr.Textbox(label="Prompt", value="def ", lines=3)
    gr.Examples([[t] for t in prompts("tinygpt")], inputs=[prompt], cache_examples=False,
                label="Example prompts", elem_id="tinygpt-examples")
    with gr.Row():
        max_new = gr.Slider(1, 1000, value=200, step=1, label="New tokens")
        temperature = gr.Slider(0, 2, value=0.8, step=0.05, label="Temperature",
                                info="0 = greedy")
        top_k = gr.Slider(0, 200, value=40, step=1, label="Top-k", info="0 = off")
        cache = gr.Radio(CACHE_CHOICES, value="on", label="KV cache")
    gen_btn = gr.Button("Generate", variant="primary")
    gen_out = gr.Textbox(label="Continuation", lines=10, interactive=False)
    gen_stats = gr.Markdown()

    # ----- handlers --------------------------------------------------------------------------
    corpus.change(lambda c: (gr.update(visible=c == "upload"), gr.update(visible=c == "folder")),
                  inputs=[corpus], outputs=[upload, folder], api_visibility="private",
                  queue=False)
    tokenizer.change(lambda t: gr.update(visible=t == "bpe"), inputs=[tokenizer],
                     outputs=[vocab], api_visibility="private", queue=False)
    train_inputs = [corpus, upload, folder, max_chars, tokenizer, vocab, pos, n_layer, n_head,
                    n_embd, block_size, dropout, max_steps, batch_size, lr, device]

    def do_start(corpus, upload, folder, max_corpus_chars, tokenizer, vocab_size, pos, n_layer,
                 n_head, n_embd, block_size, dropout, max_steps, batch_size, learning_rate,
                 device, secret=None, request: gr.Request = None):
        cfg, up = _config(locals())
        who = owner_of(secret, request)
        try:
            run_id = service.submit_training(studio, cfg, up, owner=who)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        gr.Info(f"Run queued: {service.run_title(cfg)}")
        return panel.select(run_id, studio, who)

    start.click(do_start, inputs=[*train_inputs, owner], outputs=[panel.run_picker],
                api_name="tinygpt_train")

    def do_preview(corpus, upload, folder, max_corpus_chars, tokenizer, vocab_size, pos,
                   n_layer, n_head, n_embd, block_size, dropout, max_steps, batch_size,
                   learning_rate, device):
        cfg, up = _config(locals())
        try:
            return service.preview(cfg, studio.settings.home, up).markdown()
        except ValueError as e:
            raise gr.Error(str(e)) from None

    preview_btn.click(do_preview, inputs=train_inputs, outputs=[preview_md],
                      api_name="tinygpt_preview", concurrency_limit=1)

    def do_compare(secret=None, request: gr.Request = None):
        return _tables(owner_of(secret, request))

    compare_btn.click(do_compare, inputs=[owner], outputs=[table, chart],
                      api_name="tinygpt_compare")

    def curves_of(who: str | None, metric: str):
        return compare_loss_curves(service.runs(studio, who), metric or "val_loss")

    def do_curves(metric: str, secret=None, request: gr.Request = None):
        return curves_of(owner_of(secret, request), metric)

    compare_btn.click(do_curves, inputs=[curve_metric, owner], outputs=[curves],
                      api_name="tinygpt_curves")
    curve_metric.change(do_curves, inputs=[curve_metric, owner], outputs=[curves],
                        api_visibility="private")

    def on_load(metric: str, secret=None, request: gr.Request = None):
        """The caller's runs (the page was built with the shared ones only)."""
        who = owner_of(secret, request)
        return (*_tables(who), curves_of(who, metric))

    on_page_load(on_load, inputs=[curve_metric, owner], outputs=[table, chart, curves])
    fill_on_load(del_run, lambda who: _finished(studio, who), owned=True)
    fill_on_load(gen_run, lambda who: service.trained_runs(studio, who), owned=True)

    def finished_now(secret=None, request: gr.Request = None):
        return gr.update(choices=_finished(studio, owner_of(secret, request)))

    del_run.focus(finished_now, inputs=[owner], outputs=[del_run], api_visibility="private",
                  queue=False)

    def do_delete(run_id: str | None, metric: str, secret=None, request: gr.Request = None):
        who = owner_of(secret, request)
        try:
            msg = service.delete_run(studio, run_id or "", owner=who)
        except (KeyError, PermissionError) as e:  # another's is "No run X.", as a missing one
            raise run_error(run_id, e) from None
        except ValueError as e:
            raise gr.Error(str(e)) from None
        df, bars = _tables(who)
        return (msg, gr.update(choices=_finished(studio, who), value=None), df, bars,
                curves_of(who, metric), gr.update(choices=service.trained_runs(studio, who)))

    del_btn.click(do_delete, inputs=[del_run, curve_metric, owner],
                  outputs=[del_md, del_run, table, chart, curves, gen_run],
                  api_name="tinygpt_delete")

    def trained_now(secret=None, request: gr.Request = None):
        return gr.update(choices=service.trained_runs(studio, owner_of(secret, request)))

    for event in (refresh_runs.click, gen_run.focus):
        event(trained_now, inputs=[owner], outputs=[gen_run], api_visibility="private",
              queue=False)

    def do_generate(run_id, prompt, max_new_tokens, temperature, top_k, kv_cache, secret=None,
                    request: gr.Request = None):
        who = owner_of(secret, request)
        try:
            modes = [True, False] if kv_cache.startswith("both") else [kv_cache == "on"]
            results = [service.generate_from_run(studio, run_id, prompt or "",
                                                 int(max_new_tokens), float(temperature),
                                                 int(top_k), use_cache=m, owner=who)
                       for m in modes]
        except KeyError as e:
            raise run_error(run_id, e) from None
        except (ValueError, BudgetExceeded) as e:
            raise gr.Error(str(e)) from None
        return results[0].text, _generation_markdown(results, modes)

    gen_btn.click(do_generate,
                  inputs=[gen_run, prompt, max_new, temperature, top_k, cache, owner],
                  outputs=[gen_out, gen_stats], api_name="tinygpt_generate",
                  concurrency_id="gpu")


def _finished(studio: Any, owner: str | None) -> list[tuple[str, str]]:
    """(label, id) of `owner`'s Tiny GPT runs that can be deleted (not queued or running);
    shared runs are read-only, so they are not offered."""
    from studio.jobs import FINAL

    return [(f"{v.title} · {v.status} · {v.id[-6:]}", v.id)
            for v in service.runs(studio, owner)
            if v.status in FINAL and owner and v.owner == owner]


def _config(v: dict[str, Any]) -> tuple[TinyGPTConfig, str | None]:
    """Widget values to a config (the rest keep their defaults); bad values become gr.Error."""
    try:
        _c = TinyGPTConfig.coerce  # a bad number names its field
        lr, max_steps, corpus = _c("learning_rate", v["learning_rate"]), \
            _c("max_steps", v["max_steps"]), v["corpus"]
        cfg = TinyGPTConfig(
            corpus=corpus, corpus_path=(v["folder"] or "").strip() if corpus == "folder" else "",
            max_corpus_chars=_c("max_corpus_chars", v["max_corpus_chars"]),
            tokenizer=v["tokenizer"], vocab_size=_c("vocab_size", v["vocab_size"]), pos=v["pos"],
            n_layer=_c("n_layer", v["n_layer"]), n_head=_c("n_head", v["n_head"]),
            n_embd=_c("n_embd", v["n_embd"]), block_size=_c("block_size", v["block_size"]),
            dropout=_c("dropout", v["dropout"]), max_steps=max_steps,
            batch_size=_c("batch_size", v["batch_size"]),
            learning_rate=lr, min_lr=min(lr, default_of("min_lr")), device=v["device"],
            warmup_steps=min(default_of("warmup_steps"), max_steps // 10),
            eval_every=max(1, min(default_of("eval_every"), max_steps // 5)))
        if cfg.corpus != "upload":
            cfg.validate()
    except (TypeError, ValueError) as e:
        raise gr.Error(f"Check the settings: {e}") from None
    return cfg, v["upload"]


def _generation_markdown(results: list, modes: list[bool]) -> str:
    parts = [f"KV cache {'on' if m else 'off'}: **{r.tokens_per_s:,.0f} tokens/s** "
             f"({r.new_tokens} tokens in {r.seconds:.2f} s, prompt {r.prompt_tokens} tokens)"
             for r, m in zip(results, modes, strict=True)]
    if len(results) == 2:
        speedup = results[0].tokens_per_s / max(1e-9, results[1].tokens_per_s)
        same = "the same text" if results[0].text == results[1].text else "different text " \
            "(expected only when sampling; greedy gives the same)"
        parts.append(f"cache speed-up: **{speedup:.1f}x**, {same}")
    return "  \n".join(parts)
