"""The Tiny GPT tab through its public API (gradio_client against the launched app): upload a
zip, train, compare, generate with and without the cache, and clear errors for bad input."""

from __future__ import annotations

import zipfile

import pytest

from tests.conftest import launch_studio, stop_studio


@pytest.fixture(scope="module")
def client_and_studio(tmp_path_factory):
    from gradio_client import Client

    s, app, url = launch_studio(tmp_path_factory.mktemp("tg_home"), tab_modules=["tabs.tinygpt"])
    yield Client(url, verbose=False), s
    stop_studio(s, app)


def train_args(**over):
    args = dict(corpus="stdlib", upload=None, folder="", max_corpus_chars=30_000,
                tokenizer="char", vocab_size=512, pos="alibi", n_layer=1, n_head=2, n_embd=32,
                block_size=32, dropout=0.0, max_steps=30, batch_size=8, learning_rate=3e-3,
                device="cpu")
    args.update(over)
    return args


def test_upload_train_compare_generate(client_and_studio, tmp_path):
    from gradio_client import handle_file

    client, s = client_and_studio
    z = tmp_path / "code.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a.py", "def add(a, b):\n    return a + b\n" * 300)
        zf.writestr("../escape.py", "nope")
    md = client.predict(**train_args(corpus="upload", upload=handle_file(str(z))),
                        api_name="/tinygpt_preview")
    assert "characters per token" in md and "zip-slip" in md

    picked = client.predict(**train_args(corpus="upload", upload=handle_file(str(z))),
                            api_name="/tinygpt_train")
    # the job panel's picker update: a script gets {"value": run_id, "choices": ...}
    run_id = picked["value"] if isinstance(picked, dict) else picked
    v = s.jobs.wait(run_id, timeout=90)
    assert v.status == "succeeded", v.error + v.log_tail
    assert (s.settings.uploads_dir / "tinygpt").is_dir()  # the upload was kept for the run

    table, chart = client.predict(api_name="/tinygpt_compare")
    assert [r[table["headers"].index("id")] for r in table["data"]] == [run_id]
    assert len(chart["data"]) == 2  # bars: perplexity at 1x and 2x the context

    text, stats = client.predict(run_id=run_id, prompt="def ", max_new_tokens=20,
                                 temperature=0.0, top_k=0, kv_cache="both (compare speed)",
                                 api_name="/tinygpt_generate")
    assert len(text) > 0
    assert "KV cache on" in stats and "KV cache off" in stats and "the same text" in stats


@pytest.mark.parametrize("over, message", [
    ({"corpus": "folder", "folder": "/etc"}, "outside the studio home"),
    ({"n_embd": 30, "n_head": 4}, "divisible"),
    ({"corpus": "upload"}, "upload a text file"),
    ({"device": "cuda"}, "no CUDA GPU"),
])
def test_bad_settings_give_a_clear_error(client_and_studio, over, message):
    client, s = client_and_studio
    if over.get("device") == "cuda" and s.device == "cuda":
        pytest.skip("this machine has a GPU")
    with pytest.raises(Exception, match=message):
        client.predict(**train_args(**over), api_name="/tinygpt_train")


def test_generate_without_a_run_is_an_error(client_and_studio):
    client, _ = client_and_studio
    with pytest.raises(Exception, match="pick a trained run"):
        client.predict(run_id=None, prompt="x", max_new_tokens=5, temperature=0.0, top_k=0,
                       kv_cache="on", api_name="/tinygpt_generate")


def test_cpu_defaults_finish_in_minutes_and_learned_positions_generate_200_tokens(
        client_and_studio):
    client, s = client_and_studio
    info = client.view_api(return_format="dict", print_info=False)
    params = {p["parameter_name"]: p.get("parameter_default")
              for p in info["named_endpoints"]["/tinygpt_train"]["parameters"]}
    from tabs.tinygpt.config import default_of

    # what a CPU user starts with: at least 10x less work than the GPU-sized class defaults
    work = params["max_steps"] * params["batch_size"] * params["block_size"]
    gpu_work = default_of("max_steps") * default_of("batch_size") * default_of("block_size")
    assert s.device == "cpu" and work * 10 <= gpu_work, params

    picked = client.predict(**train_args(pos="learned", block_size=32, max_steps=20),
                            api_name="/tinygpt_train")
    run_id = picked["value"] if isinstance(picked, dict) else picked
    v = s.jobs.wait(run_id, timeout=90)
    assert v.status == "succeeded", v.error + v.log_tail
    text, stats = client.predict(run_id=run_id, prompt="def ", max_new_tokens=200,
                                 temperature=0.0, top_k=0, kv_cache="on",
                                 api_name="/tinygpt_generate")
    assert "200 tokens" in stats, stats
