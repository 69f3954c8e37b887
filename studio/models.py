"""The model manager: one owner for the GPU's memory.

Models are loaded by key, measured (allocated bytes before and after the load), pinned while a
request uses them, and evicted least-recently-used first when a new one needs room. Evicted
models may be parked in CPU RAM (the warm tier) so that coming back is a copy, not a disk load.
Training jobs take a `reserve` of bytes, which evicts idle models the same way.

Loads run outside the manager's lock: the model gets a pinned "loading" entry (its estimate
counted against the budget) that other requests for it wait on, while status, Unload, Free all
and other models answer at once. First use registers with `ModelManager.ensure`. The whole
concurrency model is in studio/sessions.py.

Invariant, checked by the tests after every call: resident bytes + reservations <= budget.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from studio.config import format_bytes
from studio.devices import MemoryProbe, is_oom, tensor_bytes

log = logging.getLogger("studio.models")


class BudgetExceeded(RuntimeError):
    """A model or reservation cannot fit, even after evicting every idle model."""


def _untracked(probe: MemoryProbe) -> int | None:
    """Device bytes in use outside torch's allocator (None where the probe cannot tell)."""
    fn = getattr(probe, "untracked", None)
    return fn() if fn is not None else None


def torch_offload(obj: Any) -> Any:
    """Simplest warm tier for torch modules: move the weights to (pageable) CPU RAM."""
    return obj.to("cpu")


def torch_restore(obj: Any, device: str) -> Any:
    return obj.to(device)


def _modules_of(obj: Any) -> list[Any]:
    import torch

    if isinstance(obj, torch.nn.Module):
        return [obj]
    if isinstance(obj, dict):
        return [v for v in obj.values() if isinstance(v, torch.nn.Module)]
    comps = getattr(obj, "components", None)  # diffusers pipelines
    if isinstance(comps, dict):
        return [v for v in comps.values() if isinstance(v, torch.nn.Module)]
    raise TypeError(f"cannot swap a {type(obj).__name__}: not a module, dict or pipeline")


def _tensor_slots(obj: Any) -> list[tuple[Any, str, bool]]:
    """Every tensor a model keeps on the device, as (holder, name, is_param_data) slots:
    parameters, buffers, and bitsandbytes 4-bit quantization states. Shared tensors once."""
    slots, seen = [], set()
    for root in _modules_of(obj):
        for m in root.modules():
            for p in m._parameters.values():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    slots.append((p, "data", True))
                    qs = getattr(p, "quant_state", None)
                    for holder in (qs, getattr(qs, "state2", None)):
                        if holder is not None and id(holder) not in seen:
                            seen.add(id(holder))
                            slots += [(holder, a, False) for a in ("absmax", "code", "offset")
                                      if getattr(holder, a, None) is not None]
            for name, b in m._buffers.items():
                if b is not None and id(b) not in seen:
                    seen.add(id(b))
                    slots.append((m._buffers, name, False))
    return slots


def _get(holder: Any, name: str) -> Any:
    return holder[name] if isinstance(holder, dict) else getattr(holder, name)


def _set(holder: Any, name: str, value: Any) -> None:
    if isinstance(holder, dict):
        holder[name] = value
    else:
        setattr(holder, name, value)


class PinnedSwap:
    """Warm tier that keeps a pinned CPU copy of a model's weights after the first offload.

    Inference never changes the weights, so the copy stays valid: later offloads only drop the
    GPU tensors, and a restore is one pinned host-to-device copy (tens of GB/s) instead of a
    disk load. Works on bitsandbytes 4-bit models too (their quantization state moves along).
    Use one instance per model spec: ``ModelSpec(..., **PinnedSwap().spec_kwargs())``.
    """

    def __init__(self):
        self._pinned: dict[tuple[int, str], Any] = {}  # (id(holder), name) -> pinned tensor
        self._lock = threading.Lock()

    def _stage(self, obj: Any, swap: bool) -> Any:
        import torch

        cuda = torch.cuda.is_available()
        stream = torch.cuda.Stream() if cuda else None
        with self._lock:
            for holder, name, _ in _tensor_slots(obj):
                t = _get(holder, name)
                if t.device.type == "cpu":
                    continue
                key = (id(holder), name)
                buf = self._pinned.get(key)
                if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                    buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=cuda)
                    if stream is not None:  # off the compute stream: requests keep running
                        stream.wait_stream(torch.cuda.current_stream())
                        with torch.cuda.stream(stream):
                            buf.copy_(t, non_blocking=True)
                    else:
                        buf.copy_(t)
                    self._pinned[key] = buf
                if swap:
                    _set(holder, name, buf)
            if stream is not None:
                stream.synchronize()
        return obj

    def prestage(self, obj: Any) -> None:
        """Copy the weights to pinned RAM in the background right after a load, so that the
        first eviction is as cheap as the later ones (pinning pages is the slow part)."""
        self._stage(obj, swap=False)

    def offload(self, obj: Any) -> Any:
        return self._stage(obj, swap=True)

    def restore(self, obj: Any, device: str) -> Any:
        import torch

        for holder, name, _ in _tensor_slots(obj):
            t = _get(holder, name)
            if t.device.type != "cpu" or device == "cpu":
                continue
            _set(holder, name, t.to(device, non_blocking=True))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return obj

    def clear(self, obj: Any = None) -> None:
        with self._lock:
            self._pinned.clear()

    def spec_kwargs(self) -> dict[str, Any]:
        return {"offload": self.offload, "restore": self.restore, "unload": self.clear,
                "prestage": self.prestage}


@dataclass
class ModelSpec:
    """How to load one model. ``load(device)`` returns the object callers will use."""

    key: str
    load: Callable[[str], Any]
    title: str = ""
    estimate: int = 0  # bytes, a hint used to make room before the first load only
    reserve: int = 0  # activation memory to keep free while the model is in use
    offload: Callable[[Any], Any] | None = None  # to CPU RAM for the warm tier
    restore: Callable[[Any, str], Any] | None = None  # back to the device
    unload: Callable[[Any], None] | None = None  # extra cleanup (close files, threads)
    prestage: Callable[[Any], None] | None = None  # prepare the warm copy in the background


@dataclass
class _Entry:
    spec: ModelSpec
    obj: Any
    size: int  # measured bytes on the device
    state: str  # "loading" | "resident" | "warm"
    last_used: float
    pins: int = 0
    load_seconds: float = 0.0
    loads: int = 0  # cold loads from disk
    restores: int = 0  # warm-tier restores


@dataclass
class Reservation:
    """Bytes held for a training job; release() (or leaving the ``with``) gives them back."""

    owner: str
    nbytes: int
    _manager: ModelManager | None = field(default=None, repr=False)

    def release(self) -> None:
        if self._manager is not None:
            self._manager._release(self)
            self._manager = None

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass
class LedgerRow:
    key: str
    title: str
    state: str  # resident / warm (CPU RAM) / reserved
    size: int
    pinned: bool
    last_used: float
    estimate: int = 0  # the spec's hint, shown where the size could not be measured


class ModelManager:
    """Loads, pins and evicts models so the device stays inside ``budget`` bytes."""

    def __init__(
        self,
        budget: int,
        probe: MemoryProbe,
        warm_bytes: int = 0,
        wait_seconds: float = 120.0,
        driver_margin: int = 256 * 1024**2,
    ):
        self.budget = int(budget)
        self.probe = probe
        self.warm_bytes = int(warm_bytes)
        self.wait_seconds = wait_seconds
        self.driver_margin = driver_margin if probe.device == "cuda" else 0
        self._specs: dict[str, ModelSpec] = {}
        self._entries: dict[str, _Entry] = {}
        self._reservations: list[Reservation] = []
        self._cond = threading.Condition(threading.RLock())
        self.load_counts: dict[str, int] = {}  # cold loads from disk per key
        self.history: list[str] = []  # decisions, newest last, shown in the UI
        self.leaks: list[str] = []
        # Called with a plain sentence when a request starts waiting for memory (the app sets
        # it to a toast for the waiting session); the sentence also goes to `history`.
        self.on_wait: Callable[[str], None] | None = None

    # ----- registry -------------------------------------------------------------------------
    def register(self, spec: ModelSpec, replace: bool = False) -> None:
        with self._cond:
            if spec.key in self._specs and not replace:
                if self._specs[spec.key] is spec:
                    return
                raise ValueError(f"model key already registered: {spec.key}")
            if replace and spec.key in self._entries:
                if self._entries[spec.key].pins:
                    raise ValueError(f"{spec.key} is in use; it can be replaced when its "
                                     "requests finish")
                self._drop(spec.key, reason="replaced")
            self._specs[spec.key] = spec

    def ensure(self, key: str, make_spec: Callable[[], ModelSpec]) -> str:
        """Register ``make_spec()`` under `key` unless something already is; returns `key`.

        Check and register happen under the lock, so two first requests at once register once
        (the second gets the first one's spec). `make_spec` must be cheap: no loading.
        """
        with self._cond:
            if key not in self._specs:
                spec = make_spec()
                if spec.key != key:
                    raise ValueError(f"spec key {spec.key!r} is not {key!r}")
                self._specs[key] = spec
            return key

    def is_registered(self, key: str) -> bool:
        return key in self._specs

    # ----- accounting -----------------------------------------------------------------------
    def used(self) -> int:
        """Resident model bytes plus reservations: what the budget is checked against."""
        with self._cond:
            resident = sum(e.size for e in self._entries.values()
                           if e.state in ("resident", "loading"))
            return resident + sum(r.nbytes for r in self._reservations)

    def _warm_used(self) -> int:
        return sum(e.size for e in self._entries.values() if e.state == "warm")

    def _pinned_reserve(self) -> int:
        return sum(e.spec.reserve for e in self._entries.values() if e.pins > 0)

    def _note(self, msg: str) -> None:
        log.info(msg)
        self.history.append(time.strftime("%H:%M:%S ") + msg)
        del self.history[:-50]

    def holders(self) -> str:
        """Plain words for what holds the memory, for error messages."""
        parts = []
        for e in sorted(self._entries.values(), key=lambda e: -e.size):
            if e.state in ("resident", "loading"):
                how = "loading" if e.state == "loading" else "in use" if e.pins else "idle"
                parts.append(f"{e.spec.title or e.spec.key} {format_bytes(e.size)} ({how})")
        for r in self._reservations:
            parts.append(f"job {r.owner} {format_bytes(r.nbytes)} (reserved)")
        return ", ".join(parts) or "nothing the studio loaded"

    # ----- eviction -------------------------------------------------------------------------
    def _lru_victim(self, exclude: str | None = None) -> str | None:
        idle = [
            e for k, e in self._entries.items()
            if e.state == "resident" and e.pins == 0 and k != exclude
        ]
        if not idle:
            return None
        return min(idle, key=lambda e: e.last_used).spec.key

    def _loading_bytes(self) -> int:
        """Counted in `used` but not yet visible in the driver's free memory."""
        return sum(e.size for e in self._entries.values() if e.state == "loading")

    def _fits(self, need: int) -> bool:
        if self.used() + self._pinned_reserve() + need > self.budget:
            return False
        free = self.probe.driver_free()
        return free is None or free - self._loading_bytes() - self.driver_margin >= need

    def _make_room(self, need: int, for_what: str, exclude: str | None = None) -> None:
        """Evict idle models, oldest use first, until `need` bytes fit. Raises if they can't."""
        if need > self.budget:
            raise BudgetExceeded(
                f"{for_what} needs {format_bytes(need)} but the whole VRAM budget is "
                f"{format_bytes(self.budget)}. Choose a smaller model or quantization, or raise "
                "--vram-budget if the card has more."
            )
        idle = sum(e.size for k, e in self._entries.items()
                   if e.state == "resident" and e.pins == 0 and k != exclude)
        free = self.probe.driver_free()
        if free is not None:
            free -= self._loading_bytes()
        could_fit = (self.used() - idle + self._pinned_reserve() + need <= self.budget and
                     (free is None or free + idle - self.driver_margin >= need))
        while not self._fits(need):
            victim = self._lru_victim(exclude) if could_fit else None
            if victim is None:
                # Evict nothing when even evicting everything idle would not be enough.
                raise BudgetExceeded(
                    f"Not enough GPU memory for {for_what} ({format_bytes(need)} needed, "
                    f"{format_bytes(self.budget - self.used())} of the "
                    f"{format_bytes(self.budget)} budget free). Held by: {self.holders()}. "
                    "Models in use are unloaded when their request ends; a training job keeps "
                    "its share until it finishes."
                )
            self._evict_one(victim, reason=f"to make room for {for_what}")

    def _evict_one(self, key: str, reason: str) -> None:
        e = self._entries[key]
        spec = e.spec
        if spec.offload and self.warm_bytes > 0 and e.size <= self.warm_bytes:
            while self._warm_used() + e.size > self.warm_bytes:
                oldest = min(
                    (x for x in self._entries.values() if x.state == "warm"),
                    key=lambda x: x.last_used,
                )
                self._drop(oldest.spec.key, reason="warm tier full")
            try:
                e.obj = spec.offload(e.obj)
                e.state = "warm"
                self.probe.release_cache()
                self._note(f"parked {key} ({format_bytes(e.size)}) in CPU RAM {reason}")
                return
            except Exception as exc:  # a format that can't move: drop it instead
                log.warning("warm tier failed for %s: %s", key, exc)
        self._drop(key, reason=reason)

    def _drop(self, key: str, reason: str) -> None:
        e = self._entries.pop(key)
        obj, e.obj = e.obj, None
        try:
            ref = weakref.ref(obj)
        except TypeError:
            ref = None
        if e.spec.unload:
            try:
                e.spec.unload(obj)
            except Exception as exc:
                log.warning("unload hook for %s failed: %s", key, exc)
        del obj
        if ref is not None and ref() is not None:
            gc.collect()  # only cycles are left to find; plain references died with `del`
        self.probe.release_cache()
        if ref is not None and ref() is not None:
            msg = f"leak: {key} is still referenced after eviction; its memory may not be freed"
            self.leaks.append(msg)
            log.warning(msg)
        self._note(f"unloaded {key} ({format_bytes(e.size)}) {reason}")

    # ----- loading --------------------------------------------------------------------------
    def _measure_load(self, fn: Callable[[], Any]) -> tuple[Any, int, float]:
        before = self.probe.allocated()
        untracked_before = _untracked(self.probe)
        t0 = time.perf_counter()
        obj = fn()
        seconds = time.perf_counter() - t0
        after = self.probe.allocated()
        untracked_after = _untracked(self.probe)
        counted = tensor_bytes(obj) if self.probe.device != "cuda" or before is None else 0
        delta = (after - before) if before is not None and after is not None else 0
        # The allocator delta is the truth on a GPU; a concurrent request can only inflate it,
        # which errs on the safe side. Where nothing counts allocations, count the tensors.
        # Memory torch never sees (CTranslate2, ONNX Runtime) shows up only in what the driver
        # reports as used outside torch's allocator: add its growth.
        foreign = 0
        if untracked_before is not None and untracked_after is not None:
            foreign = max(untracked_after - untracked_before, 0)
        return obj, max(delta, counted, 0) + foreign, seconds

    def _plan_load(self, key: str) -> tuple[_Entry, Callable[[], Any], bool]:
        """Under the lock: make room and put a pinned "loading" entry in place, so the memory
        is counted and other requests for `key` wait for this load. Returns (entry, loader,
        is_restore); the caller runs the loader outside the lock."""
        spec = self._specs[key]
        title = spec.title or key
        e = self._entries.get(key)
        if e is not None and e.state == "warm" and spec.restore is not None:
            self._make_room(e.size + spec.reserve, title, exclude=key)
            warm_obj = e.obj
            e.state, e.pins = "loading", e.pins + 1
            return e, (lambda: spec.restore(warm_obj, self.probe.device)), True
        if e is not None:  # warm but cannot be restored: load from disk
            self._drop(key, reason="reload")
        self._make_room((spec.estimate or 0) + spec.reserve, title)
        e = _Entry(spec=spec, obj=None, size=int(spec.estimate or 0), state="loading",
                   last_used=time.monotonic(), pins=1)
        self._entries[key] = e
        return e, (lambda: spec.load(self.probe.device)), False

    def _finish_load(self, key: str, e: _Entry, obj: Any, size: int, secs: float,
                     restored: bool) -> None:
        """Under the lock: the loaded object becomes resident (still pinned for the caller)."""
        spec = e.spec
        title = spec.title or key
        if restored:
            e.obj, e.state, e.restores = obj, "resident", e.restores + 1
            e.size = max(size, e.size) if size else e.size
            e.load_seconds = secs
            self._note(f"restored {key} from CPU RAM in {secs:.2f} s")
        else:
            e.obj, e.size, e.state = obj, size, "resident"
            e.load_seconds, e.loads = secs, 1
            self.load_counts[key] = self.load_counts.get(key, 0) + 1
            if spec.prestage is not None and spec.offload is not None and \
                    self.probe.device == "cuda" and self._warm_used() + size <= self.warm_bytes:
                threading.Thread(target=spec.prestage, args=(obj,), daemon=True,
                                 name=f"prestage-{key}").start()
            self._note(f"loaded {key}: {format_bytes(size)} in {secs:.2f} s")
        e.last_used = time.monotonic()
        # The estimate may have been low: evict others until the measured size fits.
        over = lambda: self.used() + self._pinned_reserve() > self.budget  # noqa: E731
        while over():
            victim = self._lru_victim(exclude=key)
            if victim is None:
                e.pins -= 1
                self._drop(key, reason="did not fit")
                raise BudgetExceeded(
                    f"{title} measured {format_bytes(e.size)}, more than fits in the "
                    f"{format_bytes(self.budget)} budget next to: {self.holders()}"
                )
            self._evict_one(victim, reason=f"to make room for {title}")

    def _abandon_load(self, key: str, e: _Entry, restored: bool) -> None:
        """Under the lock: a load failed; take its entry out so others may try again."""
        e.pins -= 1
        if self._entries.get(key) is e:
            if restored and e.obj is not None:
                self._drop(key, reason="warm restore failed")
            else:
                self._entries.pop(key, None)
        self._cond.notify_all()

    def _waiting_for(self, key: str) -> str:
        """Plain words for what a request waiting for memory waits on."""
        title = self._specs[key].title or key
        jobs = [f"job {r.owner} to release {format_bytes(r.nbytes)}" for r in self._reservations]
        busy = [f"{e.spec.title or k} ({format_bytes(e.size)}, {e.state})"
                for k, e in self._entries.items() if k != key and e.pins]
        parts = []
        if jobs:
            parts.append("waiting for the " + " and the ".join(jobs))
        if busy:
            parts.append("waiting for requests using " + ", ".join(busy) + " to finish")
        return f"{title}: " + "; ".join(parts or ["waiting for GPU memory"])

    def _acquire(self, key: str, wait: float | None) -> _Entry:
        """The resident entry for `key`, pinned once for the caller. Loads run outside the
        lock: status, Unload and other models answer while a big model loads."""
        deadline = time.monotonic() + (self.wait_seconds if wait is None else wait)
        oom_retried = False
        announced = ""
        while True:
            with self._cond:
                if key not in self._specs:
                    raise KeyError(f"unknown model: {key}")
                e = self._entries.get(key)
                if e is not None and e.state == "resident":
                    e.pins += 1
                    e.last_used = time.monotonic()
                    return e
                if e is not None and e.state == "loading":
                    self._cond.wait(timeout=1.0)  # another request is loading it: share it
                    continue
                try:
                    e, loader, restored = self._plan_load(key)
                except BudgetExceeded:
                    remaining = deadline - time.monotonic()
                    blocked = bool(self._reservations) or any(
                        x.pins for k, x in self._entries.items() if k != key)
                    if remaining <= 0 or not blocked:
                        raise
                    msg = self._waiting_for(key)
                    if msg != announced:  # say once (and again when the reason changes)
                        announced = msg
                        self._note(msg)
                        if self.on_wait is not None:
                            try:
                                self.on_wait(msg)
                            except Exception:  # a notice must never break the request
                                log.debug("on_wait failed", exc_info=True)
                    self._cond.wait(timeout=min(remaining, 1.0))
                    continue
            try:
                obj, size, secs = self._measure_load(loader)
            except BaseException as exc:
                with self._cond:
                    self._abandon_load(key, e, restored)
                    if restored and not is_oom(exc):
                        log.warning("warm restore of %s failed (%s); loading from disk",
                                    key, exc)
                        continue
                    if not is_oom(exc) or isinstance(exc, BudgetExceeded):
                        raise
                    title = self._specs[key].title or key
                    if oom_retried:
                        raise BudgetExceeded(
                            f"Out of GPU memory loading {title}. Held by: {self.holders()}."
                        ) from exc
                    oom_retried = True
                    self._note(f"out of memory loading {key}; evicting idle models and "
                               "retrying once")
                    self._evict_idle(exclude=key)
                continue
            with self._cond:
                try:
                    self._finish_load(key, e, obj, size, secs, restored)
                finally:
                    self._cond.notify_all()
                return e

    def _evict_idle(self, exclude: str | None = None) -> None:
        while (victim := self._lru_victim(exclude)) is not None:
            self._evict_one(victim, reason="after out of memory")
        self.probe.release_cache()

    @contextmanager
    def use(self, key: str, wait: float | None = None) -> Iterator[Any]:
        """Load (or reuse) a model and pin it while the ``with`` block runs.

        If the memory is held by models in use elsewhere or by a job, wait up to `wait`
        seconds for it (saying so through ``on_wait`` and the decisions list) before raising
        `BudgetExceeded`. Two requests for a model that is loading share the one load.
        """
        e = self._acquire(key, wait)
        try:
            yield e.obj
        finally:
            with self._cond:
                e.pins -= 1
                e.last_used = time.monotonic()
                self._cond.notify_all()

    def get_loaded(self, key: str) -> Any | None:
        """The object if resident, without loading or pinning (for status displays)."""
        e = self._entries.get(key)
        return e.obj if e is not None and e.state == "resident" else None

    def call_with_oom_retry(self, key: str, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(model)`` pinned; on CUDA OOM evict idle models and retry once."""
        for attempt in (1, 2):
            try:
                with self.use(key) as obj:
                    return fn(obj)
            except Exception as exc:
                if not is_oom(exc) or isinstance(exc, BudgetExceeded):
                    raise
                with self._cond:
                    if attempt == 2:
                        raise BudgetExceeded(
                            f"Out of GPU memory while running {self._specs[key].title or key}. "
                            f"Held by: {self.holders()}. Try a shorter input or smaller batch."
                        ) from exc
                    self._note(f"out of memory in {key}; evicting idle models and retrying once")
                    self._evict_idle(exclude=key)
        raise AssertionError("unreachable")  # pragma: no cover

    # ----- explicit control -----------------------------------------------------------------
    def evict(self, key: str) -> bool:
        """Unload a model now (warm copy included). Refuses a pinned one (returns False)."""
        with self._cond:
            e = self._entries.get(key)
            if e is None:
                return True
            if e.pins:
                return False
            self._drop(key, reason="on request")
            self._cond.notify_all()
            return True

    def evict_all(self) -> tuple[int | None, int | None, list[str]]:
        """Unload every idle model. Returns (allocated before, after, keys still pinned)."""
        with self._cond:
            before = self.probe.allocated()
            kept = []
            for key in list(self._entries):
                if self._entries[key].pins:
                    kept.append(key)
                else:
                    self._drop(key, reason="by Free all")
            self.probe.release_cache()
            after = self.probe.allocated()
            self._cond.notify_all()
            return before, after, kept

    def reserve(self, nbytes: int, owner: str, evict: bool = True) -> Reservation:
        """Hold `nbytes` for a training job, evicting idle models to make room."""
        with self._cond:
            if evict:
                self._make_room(int(nbytes), f"job {owner}")
            elif not self._fits(int(nbytes)):
                raise BudgetExceeded(f"job {owner} needs {format_bytes(nbytes)}; "
                                     f"held by: {self.holders()}")
            r = Reservation(owner=owner, nbytes=int(nbytes), _manager=self)
            self._reservations.append(r)
            self._note(f"reserved {format_bytes(nbytes)} for job {owner}")
            return r

    def _release(self, r: Reservation) -> None:
        with self._cond:
            if r in self._reservations:
                self._reservations.remove(r)
                self._note(f"released {format_bytes(r.nbytes)} of job {r.owner}")
            self._cond.notify_all()

    def loaded(self) -> list[LedgerRow]:
        """The ledger: every resident or warm model and every reservation."""
        with self._cond:
            where = {"resident": "resident", "loading": "loading", "warm": "warm (CPU RAM)"}
            rows = [
                LedgerRow(e.spec.key, e.spec.title or e.spec.key, where[e.state],
                          e.size, e.pins > 0, e.last_used, int(e.spec.estimate or 0))
                for e in self._entries.values()
            ]
            rows += [LedgerRow(f"job:{r.owner}", f"training job {r.owner}", "reserved",
                               r.nbytes, True, 0.0) for r in self._reservations]
            return rows

    def stats(self, key: str) -> dict[str, Any]:
        """Load counters for one model (tests and benchmarks)."""
        e = self._entries.get(key)
        if e is None:
            return {"state": "absent"}
        return {"state": e.state, "size": e.size, "loads": e.loads, "restores": e.restores,
                "load_seconds": e.load_seconds, "pins": e.pins}
