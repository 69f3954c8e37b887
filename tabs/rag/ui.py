"""The RAG tab: Chat | Sources | Evaluate. Thin: widget values to `RagService` calls, plain
results to widgets, logic errors to `gr.Error`.

Scriptable with gradio_client through ``rag_create_kb``, ``rag_ingest``, ``rag_sources``,
``rag_delete_source``, ``rag_repair``, ``rag_search``, ``rag_ask``, ``rag_set_reranker`` and
``rag_eval``.
"""

from __future__ import annotations

import html
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from studio.llm import LLMError
from studio.models import BudgetExceeded
from studio.sessions import owner_of, session_of
from studio.ui.examples import assets_in
from studio.ui.widgets import fill_on_load, job_panel, on_page_load, owner_state
from tabs.rag.answer import RELATED_FOOTER, SOURCES_FOOTER, link_citations
from tabs.rag.config import KIND, AnswerConfig, RetrievalConfig
from tabs.rag.evaluation import QUESTION_HEADERS, chart_rows, question_rows, rows_table
from tabs.rag.ingest import IngestResult
from tabs.rag.retrieval import Hit
from tabs.rag.service import SOURCE_HEADERS, RagService, get_service

EVAL_HEADERS = ["configuration", "hit@k", "MRR", "ROUGE-L", "rubric", "questions"]
MODES = [("auto (big inputs become a job)", "auto"), ("now, in this request", "now"),
         ("background job", "job")]
EMPTY_SOURCES = "<p class='rag-empty'>The passages an answer uses appear here.</p>"
EXAMPLE_KB = "example-notes"  # the knowledge base the example notes go to (assets/rag)
EXAMPLE_QUESTIONS = ["What is the guest wifi password?", "On which day is a release never made?",
                     "How often is the cactus watered?"]
log = logging.getLogger("studio.rag")


def _err(exc: Exception) -> gr.Error:
    return gr.Error(str(exc.args[0] if exc.args else exc))


# ----- formatting ------------------------------------------------------------------------------
def sources_html(hits: list[Hit], cited: list[int] | None = None,
                 related: list[int] | None = None) -> str:
    """The side panel: numbered passages with path and lines; the ones the answer cites are
    marked "cited", a word-overlap match of an answer that cites nothing "related" only."""
    if not hits:
        return EMPTY_SOURCES
    parts = []
    for n, h in enumerate(hits, 1):
        c = h.chunk
        mark = (" ✓ cited" if cited and n in cited else
                " · related, not cited" if related and n in related else "")
        head = f" · {html.escape(c.heading)}" if c.heading else ""
        parts.append(
            f"<div class='rag-src' id='rag-src-{n}'><b>[{n}]</b> <code>{html.escape(c.path)}"
            f":{c.start_line}-{c.end_line}</code>{head}"
            f" <small>(similarity {h.similarity:.2f}{mark})</small>"
            f"<details{' open' if n <= 3 else ''}><summary>passage</summary>"
            f"<pre style='white-space:pre-wrap'>{html.escape(c.text)}</pre></details></div>")
    return "\n".join(parts)


def _sources_footer(hits: list[Hit], cited: list[int], related: list[int] | None = None) -> str:
    """The answer's own citations as "Sources"; when it cites none, the closest passage by
    shared words as "Related passage", said to be no citation."""
    def where(ns: list[int]) -> str:
        return " · ".join(f"`{hits[n - 1].chunk.where}`" for n in ns if 0 < n <= len(hits))

    items = [f"[{n}] `{hits[n - 1].chunk.where}`" for n in cited if 0 < n <= len(hits)]
    if items:
        return SOURCES_FOOTER + " " + " · ".join(items)
    if related and where(related):
        return (f"{RELATED_FOOTER} **Related passage** (shares words with the answer, not a "
                f"source): {where(related)}")
    return ""


def _ingest_md(res: IngestResult) -> str:
    if res.run_id:
        return (f"Started background ingest **{res.run_id}**; follow it below. Its files are "
                "added to the index when it finishes.")
    lines = [f"Indexed **{len(res.indexed)}** file(s) ({res.chunks} chunks) in "
             f"{res.seconds:.1f} s; {len(res.unchanged)} unchanged; {len(res.skipped)} skipped"]
    if res.removed:
        lines.append(f"; removed {len(res.removed)} no longer in the folder")
    return "".join(lines) + "."


def _sources_update(svc: RagService, kb: str | None, owner: str | None) -> tuple[Any, Any]:
    """The sources table and the delete picker's choices for `owner`'s `kb`."""
    if not kb or kb not in svc.list_kbs(owner):
        return pd.DataFrame(columns=SOURCE_HEADERS), gr.update(choices=[], value=None)
    rows = svc.source_rows(kb, owner=owner)
    return (pd.DataFrame(rows, columns=SOURCE_HEADERS),
            gr.update(choices=[r[0] for r in rows], value=None))


def _eval_outputs(svc: RagService, kb: str | None, owner: str | None) -> tuple[Any, ...]:
    """Latest run's table, bars, per-question results and QA file; hit@k across runs."""
    empty = pd.DataFrame(columns=EVAL_HEADERS)
    if not kb or kb not in svc.list_kbs(owner):
        return empty, None, None, pd.DataFrame(columns=QUESTION_HEADERS), None
    runs = svc.eval_runs(kb, owner=owner)
    if not runs:
        return empty, None, None, pd.DataFrame(columns=QUESTION_HEADERS), None
    latest = runs[-1]
    bars = pd.DataFrame(chart_rows([latest]))
    if not bars.empty:
        bars["bar"] = bars["metric"] + " · " + bars["config"]
    hist = pd.DataFrame([r for r in chart_rows(runs) if r["metric"].startswith("hit@")])
    qa_file = latest.qa_file if latest.qa_file and Path(latest.qa_file).is_file() else None
    return (pd.DataFrame(rows_table(latest), columns=EVAL_HEADERS), bars, hist,
            pd.DataFrame(question_rows(latest), columns=QUESTION_HEADERS), qa_file)


def fill_on_load_reranker(switch: Any, source_box: Any, svc: RagService) -> None:
    """The reranker switch and its source box as the service has them, at each page load."""
    def fill():
        ok, note = svc.reranker_status()
        return gr.update(interactive=ok, value=ok, info=note), svc.reranker_source or ""

    on_page_load(fill, outputs=[switch, source_box])


# ----- the tab ---------------------------------------------------------------------------------
def build_ui(studio: Any) -> None:
    """The tab's widgets and handlers; called inside ``with gr.Tab(TITLE):``."""
    svc = get_service(studio)
    kbs = svc.list_kbs(None)  # the shared ones: the page is built once for every session
    rerank_ok, rerank_note = svc.reranker_status()
    owner = owner_state()  # every handler names its owner: knowledge bases are per owner

    gr.Markdown("Ask questions about your own notes, docs and code. Answers cite the passages "
                "they come from; when nothing relevant is found the answer says so.")
    with gr.Row():
        kb = gr.Dropdown(label="Knowledge base", choices=kbs, value=kbs[0] if kbs else None,
                         allow_custom_value=True, scale=3)
        new_name = gr.Textbox(label="New knowledge base", placeholder="my-notes", scale=2)
        create_btn = gr.Button("Create", scale=1)

    with gr.Tabs():
        # ----- chat ---------------------------------------------------------------------------
        with gr.Tab("Chat"):
            with gr.Row():
                with gr.Column(scale=3):
                    chatbot = gr.Chatbot(label="Chat with your notes", height=460,
                                         elem_id="rag-chat")
                    question = gr.Textbox(label="Question", lines=1,
                                          placeholder="What did I write about ...?")
                    with gr.Row():
                        ask_btn = gr.Button("Ask", variant="primary")
                        search_btn = gr.Button("Only search")
                        stop_btn = gr.Button("Stop", variant="stop")
                        clear_btn = gr.Button("New conversation")
                    gr.Examples([[q] for q in EXAMPLE_QUESTIONS], inputs=[question],
                                label="Example questions (about the example notes: ingest "
                                "them on the Sources tab)", cache_examples=False,
                                elem_id="rag-example-questions")
                    with gr.Accordion("Retrieval and answer settings", open=False):
                        with gr.Row():
                            top_k = gr.Slider(1, 12, value=RetrievalConfig.top_k, step=1,
                                              label="Passages (top-k)")
                            hybrid = gr.Checkbox(value=True, label="Hybrid (vector + BM25)")
                            rerank = gr.Checkbox(value=rerank_ok, label="Cross-encoder reranker",
                                                 interactive=rerank_ok, info=rerank_note)
                        with gr.Row():
                            reranker_dir = gr.Textbox(
                                label="Reranker (local cross-encoder folder or hub id)",
                                value=svc.reranker_source or "", scale=4)
                            reranker_btn = gr.Button("Use reranker", scale=1)
                        with gr.Row():
                            tools = gr.Checkbox(value=False, label=(
                                "Let the model call tools (search_notes, read_source)"))
                            max_new = gr.Slider(16, 1024, value=AnswerConfig.max_new_tokens,
                                                step=16, label="Max new tokens")
                            temperature = gr.Slider(0, 1.5, value=0.0, step=0.05,
                                                    label="Temperature")
                with gr.Column(scale=2):
                    gr.Markdown("### Sources")
                    panel_html = gr.HTML(EMPTY_SOURCES, elem_id="rag-sources")
                    with gr.Accordion("Answer details (JSON)", open=False):
                        answer_json = gr.JSON(label="answer")

        # ----- sources --------------------------------------------------------------------------
        with gr.Tab("Sources") as sources_tab:
            with gr.Row():
                with gr.Column(scale=2):
                    files = gr.File(label="Files or zips", file_count="multiple",
                                    type="filepath")
                    folder = gr.Textbox(label="Or a folder under the studio home",
                                        placeholder="notes", info=f"relative to "
                                        f"{studio.settings.home}, or an absolute path inside it")
                    mode = gr.Radio(MODES, value="auto", label="Run")
                    ingest_btn = gr.Button("Ingest", variant="primary")
                    notes = assets_in("rag")
                    if notes:
                        gr.Examples([[notes, EXAMPLE_KB]], inputs=[files, kb],
                                    label="Example notes (a wifi note, a release checklist, "
                                    "plant care)", cache_examples=False,
                                    elem_id="rag-example-notes")
                    ingest_md = gr.Markdown()
                    skipped_df = gr.Dataframe(headers=["file", "reason skipped"],
                                              label="Skipped files", interactive=False,
                                              wrap=True)
                with gr.Column(scale=3):
                    sources_df = gr.Dataframe(headers=SOURCE_HEADERS, label="Sources",
                                              interactive=False, wrap=True)
                    with gr.Row():
                        del_path = gr.Dropdown(label="Source", choices=[], scale=4,
                                               allow_custom_value=True)
                        del_btn = gr.Button("Delete source", variant="stop", scale=1)
                        refresh_btn = gr.Button("Refresh", scale=1)
                        repair_btn = gr.Button("Check and repair", scale=1)
                    del_md = gr.Markdown()
            gr.Markdown("### Background ingests")
            panel = job_panel(studio, kind=KIND, plot_keys=("chunks_per_s",))

        # ----- evaluate -------------------------------------------------------------------------
        with gr.Tab("Evaluate") as eval_tab:
            gr.Markdown("Measure retrieval (hit@k, MRR) with and without hybrid search and the "
                        "reranker, and optionally answers (ROUGE-L, rubric), on a QA set. Each "
                        "run is saved, so you can see whether a change helped. JSONL lines: "
                        '`{"question": ..., "expected_answer": ..., "expected_source": '
                        '"notes/setup.md"}` (`query`, `answer`, `source`, `ground_truth`... '
                        "are read too). Short expected answers (numbers, versions, names) are "
                        "checked exactly; only citations the model wrote count.")
            with gr.Row():
                qa_file = gr.File(label="QA set (JSONL)", type="filepath",
                                  file_types=[".jsonl", ".json", ".txt"])
                with gr.Column():
                    gen_n = gr.Number(value=0, precision=0, minimum=0, maximum=200,
                                      label="Or generate this many questions with the LLM")
                    eval_k = gr.Slider(1, 10, value=3, step=1, label="k (hit@k)")
                    eval_answers = gr.Checkbox(value=False, label=(
                        "Also answer each question (ROUGE-L and rubric; slower)"))
                    eval_btn = gr.Button("Run evaluation", variant="primary")
            eval_md = gr.Markdown()
            eval_table = gr.Dataframe(headers=EVAL_HEADERS, label="Latest run",
                                      interactive=False)
            eval_items = gr.Dataframe(headers=QUESTION_HEADERS, label="Per question (latest run)",
                                      interactive=False, wrap=True, elem_id="rag-eval-items")
            eval_qa = gr.File(label="QA set of the latest run (JSONL: download, fix, upload)",
                              interactive=False, elem_id="rag-eval-qa")
            with gr.Row():
                eval_bars = gr.BarPlot(x="bar", y="value", color="config",
                                       title="Latest run", height=300, x_label_angle=-30,
                                       y_lim=[0, 1])
                eval_hist = gr.LinePlot(x="run", y="value", color="config",
                                        title="hit@k across runs", height=300, y_lim=[0, 1])

    # ----- handlers ---------------------------------------------------------------------------
    def create(name: str, secret: str | None = None, request: gr.Request = None):
        who = owner_of(secret, request)
        try:
            created = svc.create_kb(name, owner=who)
        except ValueError as e:
            raise _err(e) from None
        return gr.update(choices=svc.list_kbs(who), value=created.name), ""

    def kb_changed(name: str | None, secret: str | None = None, request: gr.Request = None):
        who = owner_of(secret, request)
        table, picker = _sources_update(svc, name, who)
        return (table, picker, *_eval_outputs(svc, name, who))

    eval_outputs = [eval_table, eval_bars, eval_hist, eval_items, eval_qa]

    def ingest(name: str | None, paths: list[str] | None, folder_text: str, how: str,
               secret: str | None = None, request: gr.Request = None,
               progress=gr.Progress()):  # noqa: B008
        who = owner_of(secret, request)
        if not name:
            raise gr.Error("Pick or name a knowledge base first.")
        background = {"auto": None, "now": False, "job": True}.get(how)

        def report(done: int, total: int, msg: str) -> None:
            progress((done, total), desc=msg)

        try:
            res = svc.ingest(name, paths or [], folder_text, background, report, owner=who)
        except (ValueError, BudgetExceeded) as e:
            raise _err(e) from None
        table, picker = _sources_update(svc, name, who)
        skipped = pd.DataFrame(res.skipped, columns=["file", "reason skipped"])
        run_update = panel.select(res.run_id, studio, who) if res.run_id else gr.update()
        return (_ingest_md(res), skipped, table, picker, run_update,
                gr.update(choices=svc.list_kbs(who), value=name))

    def warm(name: str | None, secret: str | None = None, request: gr.Request = None) -> None:
        """Load the knowledge base's indexes and models before the question is asked (from
        disk only: a model that is not there is skipped, never fetched)."""
        who = owner_of(secret, request)
        if not name or name not in svc.list_kbs(who):
            return
        try:
            svc.warm(name, owner=who)
        except Exception:  # noqa: BLE001 - opportunistic: asking shows the error where it belongs
            log.debug("warming %s failed", name, exc_info=True)

    def list_sources(name: str | None, secret: str | None = None,
                     request: gr.Request = None):
        who = owner_of(secret, request)
        try:
            svc.kb(name, owner=who)  # a name that is not the caller's is refused, not empty
            return _sources_update(svc, name, who)[0]
        except ValueError as e:
            raise _err(e) from None

    def delete_source(name: str | None, path: str | None, secret: str | None = None,
                      request: gr.Request = None):
        who = owner_of(secret, request)
        try:
            rec = svc.delete_source(name, path or "", owner=who)
        except ValueError as e:
            raise _err(e) from None
        table, picker = _sources_update(svc, name, who)
        return f"Deleted **{rec.path}** ({rec.chunks} chunks).", table, picker

    def poll_jobs(name: str | None, seen: Any, secret: str | None = None,
                  request: gr.Request = None):
        """Finished ingests are stored by the service's own thread; this only refreshes the
        table, and sends nothing while the knowledge base is unchanged."""
        who = owner_of(secret, request)
        if not name or name not in svc.list_kbs(who):
            return gr.skip(), gr.skip(), seen
        version = svc.kb(name, owner=who).version
        if version == seen:
            return gr.skip(), gr.skip(), seen
        return (*_sources_update(svc, name, who), version)

    def check_repair(name: str | None, secret: str | None = None, request: gr.Request = None):
        who = owner_of(secret, request)
        try:
            rep = svc.check(name or "", repair=True, owner=who)
        except ValueError as e:
            raise _err(e) from None
        table, picker = _sources_update(svc, name, who)
        return rep.summary(), table, picker

    def set_reranker(source: str):
        try:
            svc.set_reranker(source)
        except ValueError as e:
            raise _err(e) from None
        ok, note = svc.reranker_status()
        return gr.update(interactive=ok, value=ok, info=note)

    def rcfg(k: float, hyb: bool, rr: bool) -> RetrievalConfig:
        return RetrievalConfig(top_k=int(k), hybrid=bool(hyb), rerank=bool(rr))

    def search_only(name: str | None, q: str, k: float, hyb: bool, rr: bool,
                    secret: str | None = None, request: gr.Request = None):
        try:
            res = svc.search(name, q, rcfg(k, hyb, rr), owner=owner_of(secret, request))
        except (ValueError, BudgetExceeded) as e:
            raise _err(e) from None
        data = {"query": res.query, "timings_ms": res.timings_ms,
                "sources": [dict(h.as_dict(), n=i) for i, h in enumerate(res.hits, 1)]}
        return sources_html(res.hits), data

    def ask(name: str | None, q: str, history: list[dict[str, Any]] | None, k: float,
            hyb: bool, rr: bool, use_tools: bool, max_tokens: float, temp: float,
            secret: str | None = None, request: gr.Request = None
            ) -> Iterator[tuple[Any, ...]]:
        if not (q or "").strip():
            raise gr.Error("Type a question first.")
        with studio.stops.running("rag", session_of(request)) as stop:
            yield from answer(name, q, list(history or []), k, hyb, rr, use_tools,
                              max_tokens, temp, stop, owner_of(secret, request))

    def answer(name, q, history, k, hyb, rr, use_tools, max_tokens, temp,
               stop: threading.Event, who: str | None) -> Iterator[tuple[Any, ...]]:
        acfg = AnswerConfig(max_new_tokens=int(max_tokens), temperature=float(temp),
                            use_tools=bool(use_tools))
        try:
            events = svc.answer_stream(name, q, history, rcfg(k, hyb, rr), acfg, stop,
                                       owner=who)
        except (ValueError, BudgetExceeded, LLMError) as e:
            raise _err(e) from None
        chat = history + [{"role": "user", "content": q}]
        reply = {"role": "assistant", "content": ""}
        hits: list[Hit] = []
        panel_value = EMPTY_SOURCES
        try:
            for ev in events:
                if ev.kind == "sources":
                    hits = ev.hits
                    panel_value = sources_html(hits)
                elif ev.kind == "text":
                    reply["content"] += ev.text
                elif ev.kind == "tool_call":
                    call = ev.tool_call
                    args = ", ".join(f"{a}={v!r}" for a, v in call.arguments.items())
                    body = call.error or (call.result or "")
                    chat.append({"role": "assistant", "content": body[:1500],
                                 "metadata": {"title": f"🔧 {call.name}({args})"}})
                    reply["content"] = ""  # text before the call was the model thinking
                elif ev.kind == "notice":
                    gr.Warning(ev.text)
                elif ev.kind == "done":
                    ans = ev.answer
                    hits = ans.hits
                    reply["content"] = link_citations(ans.text) + \
                        _sources_footer(hits, ans.citations, ans.related)
                    yield (chat + [reply], "", sources_html(hits, ans.citations, ans.related),
                           ans.as_dict())
                    return
                yield chat + [reply], "", panel_value, None
        except (ValueError, BudgetExceeded, LLMError) as e:
            raise _err(e) from None

    def stop_answer(request: gr.Request) -> None:
        studio.stops.stop("rag", session_of(request))  # only this session's own answer

    def run_eval(name: str | None, qa: str | None, n: float, k: float, with_answers: bool,
                 secret: str | None = None, request: gr.Request = None,
                 progress=gr.Progress()):  # noqa: B008
        who = owner_of(secret, request)

        def report(done: int, total: int, msg: str) -> None:
            progress((done, total), desc=msg)

        try:
            run = svc.evaluate(name, qa, int(n or 0), int(k), bool(with_answers), report,
                               owner=who)
        except (ValueError, BudgetExceeded, LLMError) as e:
            raise _err(e) from None
        scored = max((r.n for r in run.rows), default=0)
        md = (f"Run **{run.id}**: {len(run.items)} questions ({run.qa_source}), {scored} with "
              f"an expected source, k={run.k}. " + " ".join(run.notes))
        return (md, *_eval_outputs(svc, name, who))

    # ----- wiring -----------------------------------------------------------------------------
    # The owner's secret is the last input of every handler, with a default: scripts call the
    # endpoints with the arguments they always had (their owner is their session).
    create_btn.click(create, inputs=[new_name, owner], outputs=[kb, new_name],
                     api_name="rag_create_kb")

    def kb_choices(secret: str | None = None, request: gr.Request = None):
        return gr.update(choices=svc.list_kbs(owner_of(secret, request)))

    def sources_now(name: str | None, secret: str | None = None, request: gr.Request = None):
        return _sources_update(svc, name, owner_of(secret, request))

    def evals_now(name: str | None, secret: str | None = None, request: gr.Request = None):
        return _eval_outputs(svc, name, owner_of(secret, request))

    # After a page (re)load the browser's selection is gone: show the caller's knowledge bases
    # as they are now with one selected (Ask never starts from an empty selector), and the
    # reranker switch as it is now (set since the page was built, or gone from disk).
    fill_on_load(kb, svc.list_kbs, owned=True)
    fill_on_load_reranker(rerank, reranker_dir, svc)
    kb.focus(kb_choices, inputs=[owner], outputs=[kb], api_visibility="private", queue=False)
    # The tables follow the knowledge base, also when a tab is opened (another session, a job,
    # or a reload may have changed them since the page was built).
    sources_tab.select(sources_now, inputs=[kb, owner], outputs=[sources_df, del_path],
                       api_visibility="private")
    eval_tab.select(evals_now, inputs=[kb, owner], outputs=eval_outputs,
                    api_visibility="private")
    kb.change(kb_changed, inputs=[kb, owner], outputs=[sources_df, del_path, *eval_outputs],
              api_visibility="private")
    # A cold first question on a big knowledge base took seconds (models, BM25, Chroma's
    # index); warm when one is picked and when the question box is entered.
    for trigger in (kb.change, question.focus):
        trigger(warm, inputs=[kb, owner], api_visibility="private", concurrency_id="gpu",
                show_progress="hidden", trigger_mode="once")
    ingest_btn.click(ingest, inputs=[kb, files, folder, mode, owner],
                     outputs=[ingest_md, skipped_df, sources_df, del_path, panel.run_picker, kb],
                     api_name="rag_ingest", concurrency_id="gpu")
    refresh_btn.click(list_sources, inputs=[kb, owner], outputs=[sources_df],
                      api_name="rag_sources")
    del_btn.click(delete_source, inputs=[kb, del_path, owner],
                  outputs=[del_md, sources_df, del_path], api_name="rag_delete_source")
    seen_version = gr.State(None)
    gr.Timer(3.0).tick(poll_jobs, inputs=[kb, seen_version, owner],
                       outputs=[sources_df, del_path, seen_version],
                       api_visibility="private", show_progress="hidden")
    repair_btn.click(check_repair, inputs=[kb, owner], outputs=[del_md, sources_df, del_path],
                     api_name="rag_repair")
    reranker_btn.click(set_reranker, inputs=[reranker_dir], outputs=[rerank],
                       api_name="rag_set_reranker")
    search_btn.click(search_only, inputs=[kb, question, top_k, hybrid, rerank, owner],
                     outputs=[panel_html, answer_json], api_name="rag_search",
                     concurrency_id="gpu")
    ask_inputs = [kb, question, chatbot, top_k, hybrid, rerank, tools, max_new, temperature,
                  owner]
    ask_outputs = [chatbot, question, panel_html, answer_json]
    ask_btn.click(ask, inputs=ask_inputs, outputs=ask_outputs, api_name="rag_ask",
                  concurrency_id="gpu")
    question.submit(ask, inputs=ask_inputs, outputs=ask_outputs, api_visibility="private",
                    concurrency_id="gpu")
    stop_btn.click(stop_answer, api_name="rag_stop", queue=False)
    clear_btn.click(lambda: ([], EMPTY_SOURCES, None), outputs=[chatbot, panel_html, answer_json],
                    api_visibility="private", queue=False)
    eval_btn.click(run_eval, inputs=[kb, qa_file, gen_n, eval_k, eval_answers, owner],
                   outputs=[eval_md, *eval_outputs], api_name="rag_eval",
                   concurrency_id="gpu")
