"""The model manager with several sessions at once: loads run outside its lock (status, Unload
and Free all answer during a slow load), first use registers once, a request waiting for a job's
memory says so, and memory torch does not count is measured through the probe."""

from __future__ import annotations

import threading
import time

import pytest

from studio.devices import FakeProbe
from studio.models import ModelManager, ModelSpec
from tests.unit.test_models import FakeModel, GiB, spec


@pytest.fixture
def probe():
    return FakeProbe(total_bytes=16 * GiB)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def test_status_unload_and_free_all_answer_during_a_slow_load(probe):
    m = ModelManager(budget=10 * GiB, probe=probe)
    m.register(spec(probe, "idle", GiB))
    with m.use("idle"):
        pass
    started = threading.Event()

    def slow_load(device):
        started.set()
        time.sleep(1.5)  # an 8B model from disk, shortened
        return FakeModel(probe, 2 * GiB)

    m.register(ModelSpec("big", load=slow_load, title="Big", estimate=2 * GiB,
                         unload=lambda x: x.release()))
    got, held = [], []

    def request():
        held.append(m.use("big"))
        got.append(held[0].__enter__())

    loader = threading.Thread(target=request)
    loader.start()
    assert started.wait(5)
    rows, t_status = _timed(m.loaded)
    assert {r.key: r.state for r in rows} == {"idle": "resident", "big": "loading"}
    _, t_used = _timed(m.used)
    assert m.evict("big") is False  # loading = in use: refused, at once
    ok, t_unload = _timed(lambda: m.evict("idle"))
    (_, _, kept), t_free = _timed(m.evict_all)
    assert ok and kept == ["big"]
    assert max(t_status, t_used, t_unload, t_free) < 0.2, (t_status, t_used, t_unload, t_free)
    loader.join(5)
    assert got and got[0].on_device and m.stats("big")["state"] == "resident"


def test_requests_for_a_loading_model_share_the_one_load(probe):
    m = ModelManager(budget=10 * GiB, probe=probe)
    calls = []
    m.register(spec(probe, "a", 2 * GiB, calls=calls, delay=0.4))
    held, seen = [], []

    def request():
        cm = m.use("a")
        held.append(cm)  # still in its `with` block
        seen.append(id(cm.__enter__()))

    threads = [threading.Thread(target=request) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert calls == ["a"] and len(set(seen)) == 1 and m.stats("a")["pins"] == 4


def test_concurrent_first_use_registers_once(probe):
    m = ModelManager(budget=10 * GiB, probe=probe)
    made, errors = [], []
    barrier = threading.Barrier(8)

    def first_request():
        barrier.wait()

        def make():
            made.append(1)
            time.sleep(0.02)  # reading a config: the window in which a second request came in
            return spec(probe, "emb", GiB)

        try:
            key = m.ensure("emb", make)
            with m.use(key):
                pass
        except Exception as e:  # "model key already registered" on the old check-then-register
            errors.append(e)

    threads = [threading.Thread(target=first_request) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert not errors and len(made) == 1 and m.load_counts["emb"] == 1


def test_replace_never_drops_a_model_in_use(probe):
    m = ModelManager(budget=10 * GiB, probe=probe)
    m.register(spec(probe, "a", GiB))
    with m.use("a") as a:
        with pytest.raises(ValueError, match="in use"):
            m.register(spec(probe, "a", GiB), replace=True)
        assert a.on_device


def test_a_request_waiting_for_a_jobs_memory_says_so(probe):
    m = ModelManager(budget=8 * GiB, probe=probe, wait_seconds=5)
    notices = []
    m.on_wait = notices.append
    m.register(spec(probe, "chat", 4 * GiB))
    job = m.reserve(int(6.1 * GiB), owner="20260101-qlora-abc")
    threading.Timer(0.5, job.release).start()
    with m.use("chat") as obj:
        assert obj.on_device
    assert notices and "waiting for the job 20260101-qlora-abc to release 6.10 GiB" in notices[0]
    assert any("waiting for the job" in h for h in m.history)


class ForeignModel:
    """A CTranslate2-like model: its memory is invisible to torch's allocator."""

    def __init__(self, probe, size):
        self.probe, self.size = probe, size
        probe.alloc_untracked(size)

    def release(self):
        self.probe.free_untracked(self.size)


def test_non_torch_model_is_measured_through_the_probe(probe):
    m = ModelManager(budget=10 * GiB, probe=probe)
    m.driver_margin = 0
    m.register(ModelSpec("whisper", load=lambda d: ForeignModel(probe, 3 * GiB), title="W",
                         unload=lambda x: x.release()))
    with m.use("whisper"):
        pass
    assert m.loaded()[0].size == 3 * GiB  # 0 B when only torch's counter was read
    # measured, so an idle Whisper is evicted for a new model instead of the load being refused
    m.register(spec(probe, "llm", 8 * GiB))
    with m.use("llm") as llm:
        assert llm.on_device
    assert [r.key for r in m.loaded()] == ["llm"] and probe.untracked() == 0
