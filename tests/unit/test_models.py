"""ModelManager invariants on a fake GPU: budget, LRU, pins, single load, warm tier, OOM."""

from __future__ import annotations

import random
import threading
import time

import pytest

from studio.devices import FakeProbe
from studio.models import BudgetExceeded, ModelManager, ModelSpec

GiB = 1024**3


class FakeModel:
    """Holds `size` bytes of the fake GPU while it is 'on the device'."""

    def __init__(self, probe: FakeProbe, size: int):
        self.probe, self.size, self.on_device = probe, size, True
        probe.alloc(size)

    def to_cpu(self):
        self.probe.free(self.size)
        self.on_device = False
        return self

    def to_device(self, device):
        self.probe.alloc(self.size)
        self.on_device = True
        return self

    def release(self):
        if self.on_device:
            self.probe.free(self.size)
            self.on_device = False


def spec(probe, key, size, warm=False, estimate=True, reserve=0, calls=None, delay=0.0):
    def load(device):
        if calls is not None:
            calls.append(key)
        if delay:
            time.sleep(delay)
        return FakeModel(probe, size)

    return ModelSpec(
        key=key, load=load, title=key.upper(), estimate=size if estimate else 0, reserve=reserve,
        offload=(lambda m: m.to_cpu()) if warm else None,
        restore=(lambda m, d: m.to_device(d)) if warm else None,
        unload=lambda m: m.release(),
    )


@pytest.fixture
def probe():
    return FakeProbe(total_bytes=16 * GiB)


def manager(probe, budget=10 * GiB, **kw):
    return ModelManager(budget=budget, probe=probe, **kw)


def test_sizes_are_measured_not_trusted(probe):
    m = manager(probe)
    s = spec(probe, "a", 3 * GiB, estimate=False)  # no hint at all
    m.register(s)
    with m.use("a") as obj:
        assert obj.on_device
    assert m.loaded()[0].size == 3 * GiB


def test_lru_eviction_order(probe):
    m = manager(probe, budget=10 * GiB)
    for k in "abc":
        m.register(spec(probe, k, 3 * GiB))
    for k in "abc":
        with m.use(k):
            pass
    with m.use("a"):  # a becomes most recent; b is now the oldest
        pass
    m.register(spec(probe, "d", 3 * GiB))
    with m.use("d"):
        pass
    assert sorted(r.key for r in m.loaded()) == ["a", "c", "d"]
    m.register(spec(probe, "e", 3 * GiB))
    with m.use("e"):
        pass
    assert sorted(r.key for r in m.loaded()) == ["a", "d", "e"]  # c went next, not a


def test_pinned_model_is_never_evicted(probe):
    m = manager(probe, budget=6 * GiB, wait_seconds=0.3)
    m.register(spec(probe, "big", 4 * GiB))
    m.register(spec(probe, "other", 4 * GiB))
    with m.use("big") as big:
        with pytest.raises(BudgetExceeded) as err:
            with m.use("other"):
                pass
        assert big.on_device
        assert "BIG" in str(err.value) and "in use" in str(err.value)
    # once released, the other model can take its place
    with m.use("other"):
        pass
    assert [r.key for r in m.loaded()] == ["other"]


def test_waiting_request_gets_memory_when_pin_is_released(probe):
    m = manager(probe, budget=6 * GiB, wait_seconds=5)
    m.register(spec(probe, "a", 4 * GiB))
    m.register(spec(probe, "b", 4 * GiB))
    got = []

    def second():
        with m.use("b"):
            got.append(time.monotonic())

    with m.use("a"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        released = time.monotonic()
        assert not got  # still waiting while a is pinned
    t.join(5)
    assert got and got[0] >= released


def test_no_double_load_under_concurrency(probe):
    m = manager(probe)
    calls = []
    m.register(spec(probe, "a", 2 * GiB, calls=calls, delay=0.05))
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        with m.use("a"):
            time.sleep(0.01)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["a"]
    assert m.load_counts["a"] == 1


def test_budget_holds_under_concurrent_use(probe):
    """8 threads hammer 5 models whose total is 2.5x the budget; the budget is never exceeded."""
    budget = 8 * GiB
    m = manager(probe, budget=budget, wait_seconds=30)
    sizes = {"a": 2, "b": 3, "c": 4, "d": 5, "e": 6}
    for k, g in sizes.items():
        m.register(spec(probe, k, g * GiB))
    violations, errors = [], []
    stop = threading.Event()

    def monitor():
        while not stop.is_set():
            if probe.allocated() > budget or m.used() > budget:
                violations.append((probe.allocated(), m.used()))
            time.sleep(0.001)

    def worker(seed):
        rng = random.Random(seed)
        for _ in range(25):
            key = rng.choice(list(sizes))
            try:
                with m.use(key) as obj:
                    assert obj.on_device
                    if probe.allocated() > budget:
                        violations.append(("inside", probe.allocated()))
                    time.sleep(rng.random() * 0.004)
                del obj  # callers drop their reference, or the manager reports a leak
            except BudgetExceeded as e:
                errors.append(e)

    mon = threading.Thread(target=monitor)
    mon.start()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    mon.join()
    assert not violations
    assert probe.peak() <= budget
    assert not errors  # every request waited for its turn rather than failing
    assert sum(m.load_counts.values()) > len(sizes)  # evictions really happened
    assert not m.leaks


def test_warm_tier_restores_without_reloading(probe):
    m = manager(probe, budget=5 * GiB, warm_bytes=20 * GiB)
    calls = []
    m.register(spec(probe, "a", 3 * GiB, warm=True, calls=calls))
    m.register(spec(probe, "b", 3 * GiB, warm=True, calls=calls))
    with m.use("a"):
        pass
    with m.use("b"):  # a is parked in CPU RAM
        pass
    states = {r.key: r.state for r in m.loaded()}
    assert states == {"a": "warm (CPU RAM)", "b": "resident"}
    assert probe.allocated() == 3 * GiB
    with m.use("a") as a:
        assert a.on_device
    assert calls == ["a", "b"]  # a came back by a copy, not a second load
    assert m.stats("a")["restores"] == 1


def test_warm_tier_is_bounded(probe):
    m = manager(probe, budget=3 * GiB, warm_bytes=4 * GiB)
    for k in "abc":
        m.register(spec(probe, k, 3 * GiB, warm=True))
        with m.use(k):
            pass
    states = {r.key: r.state for r in m.loaded()}
    assert states == {"b": "warm (CPU RAM)", "c": "resident"}  # a was dropped to fit the tier


def test_leak_is_detected(probe):
    m = manager(probe)
    kept = []

    def load(device):
        obj = FakeModel(probe, GiB)
        kept.append(obj)  # someone holds on to it
        return obj

    m.register(ModelSpec("leaky", load=load, estimate=GiB))
    with m.use("leaky"):
        pass
    m.evict("leaky")
    assert m.leaks and "leaky" in m.leaks[0]


def test_no_leak_reported_for_clean_eviction(probe):
    m = manager(probe)
    m.register(spec(probe, "a", GiB))
    with m.use("a"):
        pass
    assert m.evict("a")
    assert not m.leaks
    assert probe.allocated() == 0


def test_reserve_evicts_idle_models_and_is_released(probe):
    m = manager(probe, budget=10 * GiB)
    m.register(spec(probe, "a", 4 * GiB))
    m.register(spec(probe, "b", 4 * GiB))
    for k in "ab":
        with m.use(k):
            pass
    with m.reserve(5 * GiB, owner="run1"):
        assert [r.key for r in m.loaded() if r.state == "resident"] == ["b"]
        assert m.used() <= m.budget
        with pytest.raises(BudgetExceeded, match="run1"):
            m.reserve(6 * GiB, owner="run2")
    assert m.used() == 4 * GiB


def test_model_bigger_than_budget_gets_plain_message(probe):
    m = manager(probe, budget=4 * GiB)
    m.register(spec(probe, "huge", 6 * GiB))
    with pytest.raises(BudgetExceeded, match="whole VRAM budget"):
        with m.use("huge"):
            pass
    assert probe.allocated() == 0


def test_low_estimate_is_corrected_after_measuring(probe):
    m = manager(probe, budget=6 * GiB)
    m.register(spec(probe, "a", 3 * GiB))
    with m.use("a"):
        pass
    s = spec(probe, "b", 4 * GiB)
    s.estimate = GiB  # a wrong hint
    m.register(s)
    with m.use("b"):
        pass
    assert [r.key for r in m.loaded()] == ["b"]
    assert m.used() <= m.budget


def test_driver_free_memory_is_checked(probe):
    """Another process holds memory: the manager must not trust its own budget alone."""
    probe.other_process_bytes = 12 * GiB
    m = ModelManager(budget=10 * GiB, probe=probe)
    m.driver_margin = 0
    m.register(spec(probe, "a", 3 * GiB))
    m.register(spec(probe, "b", 3 * GiB))
    with m.use("a"):
        pass
    with m.use("b"):  # only 4 GiB free on the device: a must go first
        pass
    assert [r.key for r in m.loaded()] == ["b"]


def test_oom_during_load_evicts_idle_and_retries_once(probe):
    m = manager(probe, budget=10 * GiB)
    m.register(spec(probe, "a", 3 * GiB))
    with m.use("a"):
        pass
    probe.other_process_bytes = 11 * GiB  # appears after a was loaded: driver now nearly full
    m.driver_margin = 0
    attempts = []

    def load(device):
        attempts.append(1)
        return FakeModel(probe, 3 * GiB)  # raises MemoryError while a is resident

    m.register(ModelSpec("b", load=load, estimate=0, unload=lambda x: x.release()))
    with m.use("b"):
        pass
    assert len(attempts) == 2 and [r.key for r in m.loaded()] == ["b"]


def test_oom_in_request_retries_then_explains(probe):
    m = manager(probe)
    m.register(spec(probe, "a", GiB))
    m.register(spec(probe, "b", GiB))
    with m.use("b"):
        pass
    calls = []

    def flaky(obj):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return "ok"

    assert m.call_with_oom_retry("a", flaky) == "ok"
    assert "b" not in [r.key for r in m.loaded()]  # idle b was evicted before the retry

    def always(obj):
        raise MemoryError("CUDA out of memory")

    with pytest.raises(BudgetExceeded, match="Out of GPU memory"):
        m.call_with_oom_retry("a", always)


def test_evict_refuses_pinned_and_free_all_reports(probe):
    m = manager(probe)
    m.register(spec(probe, "a", 2 * GiB))
    m.register(spec(probe, "b", 2 * GiB))
    with m.use("b"):
        pass
    with m.use("a"):
        assert m.evict("a") is False
        before, after, kept = m.evict_all()
        assert (before, after, kept) == (4 * GiB, 2 * GiB, ["a"])
    assert m.evict("a")
    assert m.loaded() == []


def test_unknown_key(probe):
    m = manager(probe)
    with pytest.raises(KeyError, match="unknown model"):
        with m.use("nope"):
            pass


def test_pinned_swap_finds_every_device_tensor_once():
    import torch

    from studio.models import _tensor_slots

    class QS:  # shaped like a bitsandbytes QuantState (nested)
        def __init__(self, nested=None):
            self.absmax, self.code, self.offset, self.state2 = (torch.ones(2), torch.ones(3),
                                                                 None, nested)

    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied weights are one tensor
    lin = torch.nn.Linear(4, 4)
    lin.weight.quant_state = QS(nested=QS())
    bn = torch.nn.BatchNorm1d(4)
    model = torch.nn.ModuleDict({"emb": emb, "head": head, "lin": lin, "bn": bn})
    slots = _tensor_slots(model)
    params = [h for h, _, is_param in slots if is_param]
    assert len(params) == 5  # emb/head (once), lin.weight, lin.bias, bn.weight, bn.bias
    qs_attrs = sorted(n for h, n, p in slots if isinstance(h, QS))
    assert qs_attrs == ["absmax", "absmax", "code", "code"]  # outer and nested state, no None
    assert sorted(n for h, n, p in slots if isinstance(h, dict)) == [
        "num_batches_tracked", "running_mean", "running_var"]
    assert len(_tensor_slots({"a": model, "b": model})) == len(slots)  # shared modules once
