"""The status area (#19, #24 item 14): a queued job says why it waits and can be cancelled
there, models outside torch are not shown as 0 B, long keys are shortened, the ledger is not
called VRAM on a CPU, the Unload dropdown drops a key that is gone, and a message for the user
(gr.Error) is not written to the server log as a traceback while real errors still are."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest

from studio.models import LedgerRow, ModelSpec
from studio.sessions import owner_of
from studio.ui import views
from tests.conftest import launch_studio, stop_studio


@pytest.fixture(scope="module")
def toy_studio(tmp_path_factory):
    from gradio_client import Client

    s, app, url = launch_studio(tmp_path_factory.mktemp("home"), tab_modules=["tests.app.toytab"])
    yield Client(url, verbose=False), s, app
    stop_studio(s, app)


def test_a_queued_job_says_why_it_waits_and_the_queue_cancels_it(toy_studio):
    client, s, _ = toy_studio
    mine = owner_of(None, SimpleNamespace(session_hash=client.session_hash))  # this script's
    first = s.jobs.submit("toy", "tests.jobs.toy:count", {"steps": 400, "sleep": 0.05},
                          title="Toy A", owner=mine)
    second = s.jobs.submit("toy", "tests.jobs.toy:count", {"steps": 3}, title="Toy B",
                           owner=mine)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and s.jobs.view(first).status != "running":
        time.sleep(0.1)
    queue = {q["id"]: q for q in client.predict(api_name="/studio_status")["queue"]}
    assert "waiting for the Toy A run" in queue[second]["note"]
    assert "cancelled" in client.predict(second, api_name="/studio_cancel_job")
    assert s.jobs.view(second).status == "cancelled"
    assert "stopping" in client.predict(first, api_name="/studio_cancel_job")
    s.jobs.wait(first, timeout=60)


def test_user_messages_are_not_tracebacks_in_the_log_but_real_errors_are(toy_studio, capfd,
                                                                         caplog):
    client, s, app = toy_studio
    capfd.readouterr()
    with pytest.raises(Exception, match="Pick a model to unload"):
        client.predict("", api_name="/studio_unload")
    time.sleep(0.3)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-2000:]

    from studio.ui.errors import friendly

    def broken():
        raise RuntimeError("disk on fire")

    with caplog.at_level(logging.ERROR, logger="studio.ui"):
        with pytest.raises(Exception) as info:
            friendly(broken, action="Broken")()
    assert info.value.print_exception is False  # Gradio prints nothing more
    assert any(r.exc_info and "disk on fire" in str(r.exc_info[1]) for r in caplog.records)


def test_ledger_sizes_keys_and_name():
    ct2 = LedgerRow("whisper:ct2:tiny", "Whisper tiny (CTranslate2)", "resident", 0, False,
                    time.monotonic())
    onnx = LedgerRow("yolo:best.onnx", "best.onnx", "resident", 0, False, time.monotonic(),
                     estimate=12 * 1024**2)
    rows = views.ledger_rows([ct2, onnx])
    assert rows[0][3] == "not measured" and rows[1][3] == "≈ 12.00 MiB (estimate)"
    long_key = "llm:SmolLM2-135M-Instruct.Q4_1.gguf:9f7c41ee:ctx8192:generate"
    short = views.short_key(long_key)
    assert len(short) <= views.KEY_CHARS and short.endswith("generate") and "…" in short
    assert views.ledger_label("cpu").startswith("Memory") and "VRAM" not in \
        views.ledger_label("cpu")
    assert views.ledger_label("cuda") == "VRAM ledger"


def test_unload_dropdown_drops_a_key_that_is_gone(studio):
    import torch

    from studio.app import model_choices

    studio.models.register(ModelSpec("m1", load=lambda d: torch.nn.Linear(8, 8)))
    with studio.models.use("m1"):
        pass
    assert model_choices(studio, "m1")["value"] == "m1"
    studio.models.evict("m1")
    upd = model_choices(studio, "m1")
    assert upd["value"] is None and upd["choices"] == []
