"""The local LLM engine on CPU with tiny models: decode path, streaming, Stop, context guard,
adapters, tool calling with the real Llama-3.1/Qwen2.5 templates, and clear load errors."""

from __future__ import annotations

import threading
import time

import pytest

from studio.llm import (
    GenerationSettings,
    ModelLoadError,
    ModelSource,
    NoToolTemplate,
    TransformersEngine,
)
from studio.llm.testing import (
    build_tokenizer,
    random_lora_adapter,
    save_chat_model,
    teach,
    tiny_model,
    tokenizer_for_examples,
)
from studio.llm.tools import LLAMA, QWEN, parse_tool_calls, tool_schemas, visible_text

GREEDY = GenerationSettings(temperature=0, max_new_tokens=40)
WEATHER = {"Paris": "sunny, 21 C", "Oslo": "snow, -3 C"}


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: The city name, e.g. Paris.
    """
    return WEATHER[city]


@pytest.fixture(scope="module")
def random_folder(tmp_path_factory):
    """A random tiny Qwen2-architecture chat model saved as a normal model folder."""
    tok = build_tokenizer("qwen2.5")
    model = tiny_model("qwen2.5", tok, seed=3)
    return save_chat_model(model, tok, tmp_path_factory.mktemp("rand") / "model"), model


def collect(engine, messages, settings=GREEDY, **kw):
    events = list(engine.stream_chat(messages, settings, **kw))
    done = events[-1]
    assert done.kind == "done"
    return events, done


# ----- the decode path ----------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama3.1", "qwen2.5"])
def test_fast_decoder_gives_the_models_own_logits(family):
    """Static cache + own loop must equal the transformers forward (Llama-3 RoPE, Qwen bias)."""
    import torch

    from studio.llm.fast import StaticDecoder

    tok = build_tokenizer(family)
    model = tiny_model(family, tok)
    ids = torch.randint(0, len(tok), (1, 120), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits[0]
    dec = StaticDecoder(model, 512)
    got = [dec.prefill(ids[0, :80].tolist())[0]]
    got += [dec.step(int(t))[0] for t in ids[0, 80:119]]
    assert torch.allclose(torch.stack(got), ref[79:119], atol=1e-4)
    # a second prompt sharing a prefix reuses the cache and still gives the right logits
    again = dec.prefill(ids[0, :100].tolist())[0]
    assert torch.allclose(again, ref[99], atol=1e-4)


# ----- streaming and Stop -------------------------------------------------------------------
def test_stream_yields_incremental_text(studio, random_folder):
    engine = TransformersEngine(studio, ModelSource(str(random_folder[0])))
    msgs = [{"role": "user", "content": "Tell me about the weather."}]
    events, done = collect(engine, msgs, GenerationSettings(temperature=0, max_new_tokens=30))
    texts = [e.text for e in events if e.kind == "text"]
    assert len(texts) >= 5, "the reply should arrive in many pieces, not at once"
    assert "".join(texts) == done.text
    assert done.stats.new_tokens > 5 and done.stats.decode_tokens_per_s > 0
    assert done.messages[-1] == {"role": "assistant", "content": done.text}
    # greedy is deterministic; a seed makes sampling repeatable
    assert engine.chat(msgs, GenerationSettings(temperature=0, max_new_tokens=30)).text == \
        done.text
    sampled = GenerationSettings(temperature=1.0, top_p=0.9, max_new_tokens=20, seed=7)
    assert engine.chat(msgs, sampled).text == engine.chat(msgs, sampled).text


def test_stop_ends_generation_within_a_token_or_two(studio, random_folder):
    engine = TransformersEngine(studio, ModelSource(str(random_folder[0])))
    stop = threading.Event()
    seen = 0
    done = None
    for ev in engine.stream_chat([{"role": "user", "content": "Write a long story."}],
                                 GenerationSettings(temperature=0, max_new_tokens=300),
                                 stop_event=stop):
        if ev.kind == "text":
            seen += 1
            if seen == 3:
                stop.set()
        elif ev.kind == "done":
            done = ev
    assert done.stats.stopped and done.stats.finish_reason == "cancelled"
    assert done.stats.new_tokens <= 3 + 2 + 2  # 3 shown (+ tokens that made no text) + 1-2
    assert done.stats.new_tokens < 300


def test_generic_generate_path_streams_and_stops(studio, random_folder):
    """Models the fast path does not know use generate() with an Event StoppingCriteria."""
    engine = TransformersEngine(studio, ModelSource(str(random_folder[0]), "fp32",
                                                    title="generic"), fast=False)
    stop = threading.Event()
    texts, done = [], None
    for ev in engine.stream_chat([{"role": "user", "content": "hi"}],
                                 GenerationSettings(temperature=0, max_new_tokens=200),
                                 stop_event=stop):
        if ev.kind == "text":
            texts.append(ev.text)
            if len(texts) == 3:
                stop.set()
        elif ev.kind == "done":
            done = ev
    assert studio.models.get_loaded(engine.key).decoder is None
    assert done.stats.stopped and done.stats.new_tokens < 12


# ----- context guard ------------------------------------------------------------------------
def test_long_history_is_trimmed_with_a_notice(studio, random_folder):
    engine = TransformersEngine(studio, ModelSource(str(random_folder[0]), title="short"),
                                max_context=256)
    history = [{"role": "system", "content": "You are terse."}]
    for i in range(12):
        history += [{"role": "user", "content": f"question {i} about the weather in Paris"},
                    {"role": "assistant", "content": f"answer {i}: it is sunny and warm"}]
    history.append({"role": "user", "content": "and tomorrow?"})
    events, done = collect(engine, history, GenerationSettings(temperature=0,
                                                               max_new_tokens=64))
    notices = [e.text for e in events if e.kind == "notice"]
    assert any("Trimmed" in n and "256-token context" in n for n in notices)
    assert done.stats.trimmed_messages >= 2
    assert done.stats.prompt_tokens + 64 <= 256
    with studio.models.use(engine.key) as llm:  # system prompt and last question survive
        ids, dropped = engine.fit_context(llm, history, None, 64)
        text = llm.tokenizer.decode(ids)
    assert "You are terse." in text and "and tomorrow?" in text and "question 0 " not in text
    too_long = [{"role": "user", "content": "weather " * 400}]
    with pytest.raises(ValueError, match="too long"):
        engine.chat(too_long, GenerationSettings(max_new_tokens=64))


# ----- adapters -----------------------------------------------------------------------------
def test_adapter_attach_changes_and_detach_restores_output(studio, random_folder, tmp_path):
    folder, model = random_folder
    adapter = random_lora_adapter(model, tmp_path / "adapter")
    engine = TransformersEngine(studio, ModelSource(str(folder), title="adapted"))
    msgs = [{"role": "user", "content": "Hello there"}]
    before = engine.chat(msgs, GREEDY).text
    loads = studio.models.load_counts[engine.key]
    engine.attach_adapter(str(adapter))
    with_adapter = engine.chat(msgs, GREEDY).text
    engine.detach_adapter()
    after = engine.chat(msgs, GREEDY).text
    assert with_adapter != before
    assert after == before
    assert studio.models.load_counts[engine.key] == loads, "the base must not be reloaded"
    with pytest.raises(ModelLoadError, match="adapter"):
        engine.attach_adapter(str(tmp_path))


# ----- tools --------------------------------------------------------------------------------
def _tool_examples(family: str):
    """Two turns a tool-trained model produces: the call, then the answer using the result."""
    schemas = tool_schemas([get_weather])
    ask = [{"role": "user", "content": "What is the weather in Oslo?"}]
    if family == "qwen2.5":
        call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    else:
        call = '{"name": "get_weather", "parameters": {"city": "Oslo"}}'
    after = ask + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather",
                                              "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "name": "get_weather", "content": WEATHER["Oslo"]},
    ]
    answer = "In Oslo it is snow, -3 C."
    return schemas, ask, [(ask, schemas, call), (after, schemas, answer)], answer


@pytest.fixture(scope="module", params=["qwen2.5", "llama3.1"])
def tool_model(request, tmp_path_factory):
    """A tiny model taught the two turns, saved as a local model folder."""
    family = request.param
    schemas, ask, examples, answer = _tool_examples(family)
    tok = tokenizer_for_examples(family, examples)
    model = tiny_model(family, tok, hidden=64, layers=2)
    loss = teach(model, tok, examples)
    assert loss < 0.05, f"the tiny {family} model did not learn its two turns (loss {loss})"
    folder = save_chat_model(model, tok, tmp_path_factory.mktemp(family) / "model")
    return family, folder, ask, answer


def test_tool_loop_runs_a_real_function(studio, tool_model):
    family, folder, ask, answer = tool_model
    engine = TransformersEngine(studio, ModelSource(str(folder), title=family))
    calls = []

    def get_weather_logged(city: str) -> str:
        """Get the current weather in a city.

        Args:
            city: The city name, e.g. Paris.
        """
        calls.append(city)
        return get_weather(city)

    get_weather_logged.__name__ = "get_weather"
    events, done = collect(engine, ask, GenerationSettings(temperature=0, max_new_tokens=60),
                           tools=[get_weather_logged])
    tool_events = [e.tool_call for e in events if e.kind == "tool_call"]
    assert calls == ["Oslo"], "the function really ran, once, with the model's argument"
    assert len(tool_events) == 1
    assert tool_events[0].name == "get_weather"
    assert tool_events[0].arguments == {"city": "Oslo"}
    assert tool_events[0].result == "snow, -3 C"
    assert done.text == answer
    shown = "".join(e.text for e in events if e.kind == "text")
    assert "get_weather" not in shown, "raw tool-call JSON is not streamed as chat text"
    roles = [m["role"] for m in done.messages]
    assert roles == ["user", "assistant", "tool", "assistant"]


def test_model_without_tool_template_says_so(studio, tmp_path):
    tok = build_tokenizer("qwen2.5")
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                         "<|im_end|>\n{% endfor %}<|im_start|>assistant\n")
    folder = save_chat_model(tiny_model("qwen2.5", tok), tok, tmp_path / "plain")
    engine = TransformersEngine(studio, ModelSource(str(folder), title="plain"))
    with pytest.raises(NoToolTemplate, match="has no tool template"):
        engine.chat([{"role": "user", "content": "hi"}], GREEDY, tools=[get_weather])
    assert engine.chat([{"role": "user", "content": "hi"}], GREEDY).stats.new_tokens > 0


def test_tool_call_parsing_for_both_formats():
    text = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' \
           '\n</tool_call>'
    content, calls = parse_tool_calls(text, QWEN)
    assert content == "Let me look." and calls[0].arguments == {"city": "Paris"}
    assert visible_text(text, QWEN) == "Let me look.\n"
    assert visible_text("Let me look.\n<tool_c", QWEN) == "Let me look.\n"
    content, calls = parse_tool_calls('<|python_tag|>{"name": "get_weather", "parameters": '
                                      '{"city": "Oslo"}}', LLAMA)
    assert content == "" and calls[0].name == "get_weather"
    assert parse_tool_calls("The weather is {fine}.", LLAMA) == ("The weather is {fine}.", [])
    assert visible_text('{"name": "get_', LLAMA) == ""


# ----- errors -------------------------------------------------------------------------------
def test_bad_model_paths_give_clear_errors(studio, tmp_path):
    cases = {
        str(tmp_path / "nope"): "No such model file or folder",
        str(tmp_path / "weights.bin"): "Unsupported model file",
        str(tmp_path / "empty"): "not a model folder",
        "": "No model given",
    }
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    (tmp_path / "empty").mkdir()
    for source, message in cases.items():
        engine = TransformersEngine(studio, ModelSource(source, title=f"bad{len(message)}"))
        with pytest.raises(ModelLoadError, match=message):
            engine.chat([{"role": "user", "content": "hi"}], GREEDY)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file at all")
    engine = TransformersEngine(studio, ModelSource(str(broken), title="broken"))
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match="Could not load"):
        engine.chat([{"role": "user", "content": "hi"}], GREEDY)
    assert time.perf_counter() - t0 < 30
