"""The Transcribe tab. Thin: widgets -> `TranscribeConfig` -> `WhisperService`, errors ->
`gr.Error`. Scriptable with gradio_client through ``whisper_transcribe``, ``whisper_stop``,
``whisper_rename``, ``whisper_export``, ``whisper_play``, ``whisper_postedit`` and
``whisper_accept``.

Click-to-play: the transcript view's own script sends the clicked segment's index with a
``click`` event; the handler answers with a short cut of the recording from that segment's start,
which the player autoplays (`tabs.whisper.playback`).
"""

from __future__ import annotations

import contextvars
import html
import queue
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from studio.llm import LLMError, ModelLoadError
from studio.models import BudgetExceeded
from studio.sessions import owner_of, session_of
from studio.ui.examples import asset
from studio.ui.widgets import owned_choices, owner_state
from tabs.whisper.audio import AUDIO_EXTS, VIDEO_EXTS
from tabs.whisper.config import (
    COMPUTE_TYPES,
    ENGINES,
    GPU_DEFAULT_MODEL,
    MODEL_SIZES,
    TranscribeConfig,
)
from tabs.whisper.formats import FORMATS, clock
from tabs.whisper.postedit import diff_html
from tabs.whisper.service import WEAK, WhisperService, get_service, model_title
from tabs.whisper.transcript import Segment, Transcript

COLOURS = ["#2e86c1", "#c0392b", "#239b56", "#af7ac5", "#d68910", "#17a589", "#7f8c8d"]
LANGUAGES = ["auto", "en", "de", "fr", "es", "it", "pt", "nl", "pl", "ru", "zh", "ja", "ko"]
EMPTY = "<p class='whisper-empty'>The transcript appears here.</p>"
RUNNING = ("<p class='whisper-empty whisper-running'>Transcribing… segments appear here as "
           "they are decoded.</p>")
STREAM_EVERY_S = 0.5  # how often the view is redrawn while segments arrive
# Delegated on the view's root, so it survives every re-render of the transcript (rename, accept).
# A click marks the segment as loading (a spinner after its text) until the player shows the
# new cut: the marker is the visible "it is coming" a person waits on.
CLICK_JS = """
const wClear = () => element.querySelectorAll('.whisper-loading')
  .forEach((s) => s.classList.remove('whisper-loading'));
const wPlayerLink = () => {
  const p = document.getElementById('whisper-player');
  const a = p && p.querySelector("a[href*='from_']");
  return a ? a.getAttribute('href') : '';
};
let wBefore = null;
const wWatch = () => {
  const p = document.getElementById('whisper-player');
  if (!p || p.dataset.whisperWatched) return;
  p.dataset.whisperWatched = '1';
  new MutationObserver(() => {
    if (wBefore !== null && wPlayerLink() !== wBefore) { wBefore = null; wClear(); }
  }).observe(p, {subtree: true, childList: true, attributes: true});
};
const wPlay = (seg) => {
  wWatch();
  wClear();
  wBefore = wPlayerLink();
  seg.classList.add('whisper-loading');
  setTimeout(() => seg.classList.remove('whisper-loading'), 30000);
  trigger('click', {segment: Number(seg.dataset.index)});
};
element.addEventListener('click', (e) => {
  const seg = e.target.closest('.whisper-seg');
  if (seg) wPlay(seg);
});
element.addEventListener('keydown', (e) => {
  const seg = e.target.closest('.whisper-seg');
  if (seg && (e.key === 'Enter' || e.key === ' ')) { e.preventDefault(); wPlay(seg); }
});
"""
VIEW_CSS = """
.whisper-seg { cursor: pointer; padding: 2px 6px; border-radius: 6px; }
.whisper-seg:hover, .whisper-seg:focus { background: var(--background-fill-secondary); }
.whisper-seg.whisper-loading::after { content: ' ⏳ loading…';
  color: var(--body-text-color-subdued); }
"""


def _err(exc: Exception) -> gr.Error:
    return gr.Error(str(exc.args[0] if exc.args else exc))


def transcript_html(t: Transcript) -> str:
    """Segments with timestamps, speaker names in a stable colour per speaker."""
    if not t.segments:
        return EMPTY
    colour = {s: COLOURS[i % len(COLOURS)] for i, s in enumerate(t.speakers)}
    rows = []
    for i, s in enumerate(t.segments):
        who = t.name_of(s.speaker)
        c = colour.get(s.speaker or "", "#555")
        head = f"<b style='color:{c}'>{html.escape(who)}</b> " if who else ""
        conf = f" title='confidence {s.confidence:.2f}'" if s.confidence is not None else ""
        rows.append(f"<div class='whisper-seg' role='button' tabindex='0' data-index='{i}' "
                    f"data-start='{s.start:.2f}'{conf}>"
                    f"<code>{clock(s.start)}–{clock(s.end)}</code> {head}"
                    f"{html.escape(s.text)}</div>")
    return "\n".join(rows)


def _notes_md(t: Transcript) -> str:
    lines = [f"Model: {html.escape(t.model)}"] if t.model else []
    return "  \n".join(lines + [f"· {html.escape(n)}" for n in t.notes])


def partial_html(segments: list[Segment]) -> str:
    """The view while the transcription runs: the segments decoded so far (no speakers yet)."""
    if not segments:
        return RUNNING
    return transcript_html(Transcript(segments=list(segments))) + (
        "\n<p class='whisper-empty whisper-running'>… transcribing</p>")


def speakers_label(method: str) -> tuple[str, str]:
    """(checkbox label, its info line) for what "Find speakers" will use here."""
    if method == "pyannote":
        return "Find speakers (pyannote)", "the profile's pyannote pipeline"
    if method == WEAK:
        from tabs.whisper.dvector import TITLE

        return ("Find speakers (weak offline fallback)",
                f"no pyannote weights here: {TITLE}; pyannote (Models tab) is much better")
    return ("Find speakers (not available here)",
            "no pyannote pipeline and no offline fallback (pip install --no-deps "
            "resemblyzer==0.1.4); give a hub token and pipeline below")


def _config(model, engine, compute, language, beam, prompt, hotwords, vad, words, diarize,
            num, lo, hi) -> TranscribeConfig:
    return TranscribeConfig(
        model=model or "", engine=engine, compute_type=compute, language=language or None,
        beam_size=int(beam), initial_prompt=prompt or "", hotwords=hotwords or "", vad=bool(vad),
        word_timestamps=bool(words), diarize=bool(diarize), num_speakers=int(num) or None,
        min_speakers=int(lo) or None, max_speakers=int(hi) or None)


def build_ui(studio: Any) -> None:
    svc: WhisperService = get_service(studio)
    choice = studio.choices.get("whisper")
    default_model = choice.source if choice and choice.source else GPU_DEFAULT_MODEL
    exts = sorted(AUDIO_EXTS | VIDEO_EXTS)
    method = svc.diarization_method()
    dia_label, dia_info = speakers_label(method)

    def names() -> list[str]:
        return [default_model, *[m for m in MODEL_SIZES if m != default_model]]

    gr.Markdown("Drop a recording (audio or video) or record one; get a transcript with "
                "speakers, subtitles and an optional LLM clean-up.")
    with gr.Row():
        with gr.Column(scale=2):
            upload = gr.File(label="Audio or video file", file_types=exts, type="filepath",
                             elem_id="whisper-upload")
            mic = gr.Audio(label="…or record", sources=["microphone"], type="filepath")
            with gr.Accordion("Model and decoding", open=False):
                # the page config is everyone's: shared tuned models only (own: on load)
                model = gr.Dropdown(_model_choices(studio, names(), None),
                                    value=default_model, allow_custom_value=True, label="Model",
                                    elem_id="whisper-model",
                                    info="a size (download it on the Models tab first), a local "
                                    "folder, or a model tuned in the Whisper fine-tune tab")
                card = gr.Markdown()  # a tuned model's run card
                engine = gr.Radio(list(ENGINES), value="auto", label="Engine")
                compute = gr.Radio(list(COMPUTE_TYPES), value="int8", label="Compute type")
                language = gr.Dropdown(LANGUAGES, value="auto", allow_custom_value=True,
                                       label="Language")
                beam = gr.Slider(1, 10, value=5, step=1, label="Beam size")
                prompt = gr.Textbox(label="Initial prompt", placeholder="names, jargon, style")
                hotwords = gr.Textbox(label="Hotwords")
                vad = gr.Checkbox(value=True, label="Skip silence (Silero VAD)")
                words = gr.Checkbox(value=True, label="Word timestamps")
            with gr.Accordion("Speakers", open=False):
                diarize = gr.Checkbox(value=bool(method), label=dia_label, info=dia_info,
                                      elem_id="whisper-diarize")
                num = gr.Number(0, precision=0, label="Number of speakers (0 = auto)")
                lo = gr.Number(0, precision=0, label="At least (0 = no bound)")
                hi = gr.Number(0, precision=0, label="At most (0 = no bound)")
                token = gr.Textbox(label="Hugging Face token", type="password")
                dia_src = gr.Textbox(label="Diarization pipeline (hub id or local folder)",
                                     placeholder="default: the profile's choice")
            with gr.Row():
                go = gr.Button("Transcribe", variant="primary")
                stop = gr.Button("Stop", variant="stop")
            clip = asset("whisper", "meeting-note.wav")
            if clip:
                gr.Examples([[clip]], inputs=[upload], cache_examples=False,
                            label="Example recording (6 s of synthetic speech)",
                            elem_id="whisper-examples")
        with gr.Column(scale=3):
            notes = gr.Markdown(elem_id="whisper-notes")
            view = gr.HTML(EMPTY, js_on_load=CLICK_JS, css_template=VIEW_CSS,
                           elem_id="whisper-view")
            player = gr.Audio(label="Click a segment to play from there", type="filepath",
                              interactive=False, autoplay=True, elem_id="whisper-player")
            segment_no = gr.Number(0, precision=0, visible=False)  # the index, for scripts
            tid = gr.Textbox(label="Transcript id", interactive=False)
            with gr.Row():
                speaker = gr.Dropdown([], label="Speaker", allow_custom_value=True,
                                      elem_id="whisper-speaker")
                new_name = gr.Textbox(label="New name")
                rename = gr.Button("Rename", interactive=False)
            with gr.Row():
                fmt = gr.Dropdown(list(FORMATS), value="srt", label="Format")
                export = gr.Button("Download", elem_id="whisper-download")
                to_training = gr.Button("Use as training data")
            out_file = gr.File(label="Export", elem_id="whisper-export")
            training_md = gr.Markdown()
            with gr.Accordion("Post-edit (glossary and LLM)", open=False):
                small = svc.llm_too_small()
                chat = studio.choices.get("chat")
                gr.Markdown("Glossary terms are fixed first, with no model: words that sound "
                            "like a term are replaced by it. "
                            + (small or (f"Then the chat model ({chat.title}) corrects "
                                         "punctuation, casing and names." if chat else "")),
                            elem_id="whisper-postedit-note")
                glossary = gr.Textbox(label="Glossary (names and terms, comma separated)")
                with gr.Row():
                    propose = gr.Button("Propose corrections")
                    accept = gr.Button("Accept", interactive=False)
                diff = gr.HTML(elem_id="whisper-diff")

    def do_transcribe(file_path, mic_path, model, engine, compute, language, beam, prompt,
                      hotwords, vad, words, diarize, num, lo, hi, hf_token, source, secret,
                      request: gr.Request, progress=gr.Progress()):  # noqa: B008
        """A generator: the view fills with segments as they are decoded, then shows the
        finished transcript with speakers."""
        path = file_path or mic_path
        if not path:
            raise gr.Error("Upload a file or record something first.")
        try:  # a model tuned by another session is answered as one that is not there
            studio.jobs.check_path(Path(model or "").expanduser(), owner_of(secret, request),
                                   studio.settings.exports_dir)
        except KeyError:
            raise gr.Error(f"Model: {model} does not exist.") from None
        try:
            cfg = _config(model, engine, compute, language, beam, prompt, hotwords, vad, words,
                          diarize, num or 0, lo or 0, hi or 0)
        except ValueError as e:
            raise _err(e) from None
        arrived: queue.Queue = queue.Queue()
        done: dict[str, Any] = {}
        with studio.stops.running("whisper", session_of(request)) as flag:
            def work() -> None:
                try:
                    done["t"] = svc.transcribe(
                        path, cfg, progress=lambda f, m: progress(f, desc=m), stop=flag,
                        hf_token=hf_token or "", diarization_source=source or "",
                        on_segment=arrived.put)
                except BaseException as e:  # noqa: BLE001 - re-raised below, in the request
                    done["error"] = e

            worker = threading.Thread(target=contextvars.copy_context().run, args=(work,),
                                      daemon=True, name="whisper-transcribe")
            worker.start()
            try:
                segments: list[Segment] = []
                yield ("", RUNNING, "", gr.update(choices=[], value=None),
                       gr.update(interactive=False))
                shown = 0
                while worker.is_alive() or not arrived.empty():
                    try:
                        segments.append(arrived.get(timeout=STREAM_EVERY_S))
                    except queue.Empty:
                        pass
                    while not arrived.empty():
                        segments.append(arrived.get_nowait())
                    if len(segments) > shown:
                        shown = len(segments)
                        yield gr.skip(), partial_html(segments), gr.skip(), gr.skip(), gr.skip()
                worker.join()
            finally:
                if worker.is_alive():  # the page went away mid-run: stop the work too
                    flag.set()
        err = done.get("error")
        if err is not None:
            if isinstance(err, (ValueError, BudgetExceeded, RuntimeError)):
                raise _err(err) from None
            raise err
        t = done["t"]
        new_id = svc.save(t)
        yield (new_id, transcript_html(t), _notes_md(t),
               gr.update(choices=[t.name_of(s) for s in t.speakers], value=None),
               gr.update(interactive=bool(t.speakers)))

    def clear_for_new_run():
        """Before a new transcription: nothing of the last one stays on the page."""
        return (gr.update(value=""), RUNNING, "", gr.update(choices=[], value=None),
                None, "", None, "", gr.update(interactive=False))

    def do_stop(request: gr.Request) -> None:
        studio.stops.stop("whisper", session_of(request))  # only this session's own run

    def do_rename(transcript_id, who, name):
        try:
            t = svc.rename(transcript_id, who or "", name or "")
        except ValueError as e:
            raise _err(e) from None
        return (transcript_html(t),
                gr.update(choices=[t.name_of(s) for s in t.speakers], value=None))

    def do_export(transcript_id, f):
        try:
            return str(svc.export(transcript_id, f))
        except ValueError as e:
            raise _err(e) from None

    def do_play(transcript_id, index, evt: gr.EventData):
        """From a click in the view the segment comes with the event; from a script, as
        `index`."""
        clicked = (getattr(evt, "_data", None) or {}).get("segment")
        try:
            clip, _ = svc.play_from(transcript_id, int(index if clicked is None else clicked))
        except ValueError as e:
            raise _err(e) from None
        return str(clip)

    def do_propose(transcript_id, gloss, progress=gr.Progress()):  # noqa: B008
        try:
            edits, said = svc.propose(transcript_id, [g for g in (gloss or "").split(",")],
                                      progress=lambda f, m: progress(f, desc=m))
        except (ValueError, LLMError, ModelLoadError, BudgetExceeded) as e:
            raise _err(e) from None
        return f"<p class='whisper-postedit-summary'>{html.escape(said)}.</p>" + diff_html(edits)

    def do_accept(transcript_id):
        try:
            t = svc.accept(transcript_id)
        except ValueError as e:
            raise _err(e) from None
        n = next((x for x in reversed(t.notes) if x.startswith("post-edit applied")), "")
        return transcript_html(t), f"<p>Accepted: {html.escape(n)}.</p>"

    settings = [model, engine, compute, language, beam, prompt, hotwords, vad, words, diarize,
                num, lo, hi, token, dia_src]
    go.click(clear_for_new_run, None,
             [tid, view, notes, speaker, out_file, diff, player, training_md, accept],
             api_visibility="private", queue=False, show_progress="hidden").then(
        do_transcribe, [upload, mic, *settings, owner_state()],
        [tid, view, notes, speaker, rename],
        api_name="whisper_transcribe", concurrency_id="gpu")
    stop.click(do_stop, None, None, api_name="whisper_stop", queue=False)
    # No status badges on a failed rename: the message comes as a toast, the transcript and the
    # Speaker box stay usable. An export made before the rename is outdated: it is cleared.
    rename.click(do_rename, [tid, speaker, new_name], [view, speaker], api_name="whisper_rename",
                 show_progress="hidden").success(lambda: None, None, out_file,
                                                 api_visibility="private", queue=False)
    export.click(do_export, [tid, fmt], out_file, api_name="whisper_export")
    # Off the queue: a click plays at once even while a transcription or post-edit runs.
    view.click(do_play, [tid, segment_no], player, api_name="whisper_play", queue=False,
               show_progress="minimal")
    tid.change(lambda: (None, None), None, [player, out_file], api_visibility="private",
               queue=False, show_progress="hidden")
    propose.click(do_propose, [tid, glossary], diff, api_name="whisper_postedit",
                  concurrency_id="gpu").then(
        lambda t: gr.update(interactive=bool(svc._proposals.get(t or ""))), [tid], accept,
        api_visibility="private", queue=False, show_progress="hidden")
    accept.click(do_accept, [tid], [view, diff], api_name="whisper_accept").then(
        lambda: gr.update(interactive=False), None, accept, api_visibility="private",
        queue=False, show_progress="hidden")
    dia_src.change(lambda src: gr.update(value=bool(svc.diarization_method(src or "")))
                   if (src or "").strip() else gr.skip(), [dia_src], diarize,
                   api_visibility="private", queue=False, show_progress="hidden")

    def do_to_training(transcript_id):
        """Each segment of this (corrected) transcript becomes a training pair."""
        try:
            from tabs.whisper_ft.service import dataset_from_transcript

            s = dataset_from_transcript(studio, transcript_id or "")
        except ImportError:
            raise gr.Error("The Whisper fine-tune tab is not installed.") from None
        except ValueError as e:
            raise _err(e) from None
        return s.markdown() + "  \nUse this dataset id in the Whisper fine-tune tab."

    to_training.click(do_to_training, [tid], training_md, api_name="whisper_to_training")
    def card_of(m: str, secret: Any = None, request: gr.Request = None) -> str:
        return _run_card(studio, m, owner_of(secret, request))

    owned_choices(model, lambda owner: _model_choices(studio, names(), owner))
    model.change(card_of, [model, owner_state()], card, api_visibility="private", queue=False)


def _model_choices(studio: Any, names: list[str], owner: Any) -> list[tuple[str, str]]:
    """(label, value): 'Whisper tiny.en' for the profile's folder, 'Whisper large-v3' for a
    size, then the models `owner` tuned in the Whisper fine-tune tab (if installed)."""
    choice = studio.choices.get("whisper")
    out = [(model_title(n, choice), n) for n in names]
    try:
        from tabs.whisper_ft.service import tuned_models
    except ImportError:
        return out
    return out + tuned_models(studio, owner)


def _run_card(studio: Any, model: str, owner: Any) -> str:
    try:
        from tabs.whisper_ft.service import run_card
    except ImportError:
        return ""
    return run_card(studio, model, owner)
