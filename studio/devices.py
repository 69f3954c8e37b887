"""Memory probes: how much the device holds, how much is in use, how much the driver has free.

The model manager only talks to a probe, so its invariants are tested on CPU with `FakeProbe`
and the same code measures real bytes with `CudaProbe` on a GPU.
"""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass
from typing import Any, Protocol

DESKTOP_RESERVE = int(0.75 * 1024**3)  # what a desktop session and the CUDA context keep


class MemoryProbe(Protocol):
    name: str
    device: str  # torch device string: "cuda", "cpu"

    def total(self) -> int: ...
    def allocated(self) -> int | None: ...  # None: this device cannot count allocations
    def driver_free(self) -> int | None: ...  # what the driver says is free (other processes too)
    def peak(self) -> int | None: ...
    def release_cache(self) -> None: ...
    # Device bytes in use that torch's allocator did not hand out (CTranslate2, ONNX Runtime,
    # other processes); the manager measures non-torch models by its growth over a load.
    # None: this device cannot tell.
    def untracked(self) -> int | None: ...


def tensor_bytes(obj: Any) -> int:
    """Bytes held by the tensors of a model-like object (modules, pipelines, dicts of them).

    Used where the device cannot count allocations (CPU), so sizes are still measured from the
    object rather than trusted from a hint.
    """
    import torch

    seen: set[int] = set()
    total = 0

    def add_tensor(t):
        nonlocal total
        if t is None:
            return
        try:
            key = t.untyped_storage().data_ptr()
            size = t.untyped_storage().nbytes()
        except Exception:  # meta tensors, tensor subclasses without storage
            key, size = id(t), t.numel() * t.element_size()
        if key not in seen:
            seen.add(key)
            total += size

    def walk(o, depth=0):
        if depth > 4 or o is None:
            return
        if isinstance(o, torch.Tensor):
            add_tensor(o)
        elif isinstance(o, torch.nn.Module):
            for p in o.parameters():
                add_tensor(p)
            for b in o.buffers():
                add_tensor(b)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v, depth + 1)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v, depth + 1)
        elif isinstance(getattr(o, "components", None), dict):
            walk(o.components, depth + 1)  # diffusers pipelines
        elif hasattr(o, "__dict__"):
            for v in vars(o).values():
                if isinstance(v, (torch.nn.Module, torch.Tensor)):
                    walk(v, depth + 1)

    walk(obj)
    return total


class CudaProbe:
    """Real counts from the CUDA caching allocator and the driver."""

    device = "cuda"

    def __init__(self, index: int = 0):
        import torch

        self._torch = torch
        self.index = index
        props = torch.cuda.get_device_properties(index)
        self.name = props.name
        self._total = props.total_memory

    def total(self) -> int:
        return self._total

    def allocated(self) -> int:
        return self._torch.cuda.memory_allocated(self.index)

    def driver_free(self) -> int:
        free, _ = self._torch.cuda.mem_get_info(self.index)
        return free

    def peak(self) -> int:
        return self._torch.cuda.max_memory_allocated(self.index)

    def untracked(self) -> int:
        free, total = self._torch.cuda.mem_get_info(self.index)
        return max(total - free - self._torch.cuda.memory_reserved(self.index), 0)

    def release_cache(self) -> None:
        gc.collect()
        self._torch.cuda.empty_cache()


class CpuProbe:
    """No GPU: models live in RAM. Sizes are measured from the objects' tensors."""

    device = "cpu"
    name = "CPU only"

    def total(self) -> int:
        import psutil

        return psutil.virtual_memory().total

    def allocated(self) -> None:
        return None

    def driver_free(self) -> int:
        import psutil

        return psutil.virtual_memory().available

    def peak(self) -> None:
        return None

    def release_cache(self) -> None:
        pass  # RAM is returned when the last reference goes

    def untracked(self) -> None:
        return None  # RAM: sizes come from the objects' tensors


@dataclass
class FakeProbe:
    """A pretend GPU for tests: loaders call `alloc`/`free` to move the counter."""

    total_bytes: int
    name: str = "Fake GPU"
    device: str = "cpu"
    other_process_bytes: int = 0  # memory held outside this process

    def __post_init__(self):
        self._lock = threading.Lock()
        self._allocated = 0
        self._foreign = 0  # held by "non-torch" libraries in this process
        self._peak = 0
        self.release_calls = 0

    def alloc(self, n: int) -> None:
        with self._lock:
            if self._allocated + self._foreign + n + self.other_process_bytes > self.total_bytes:
                raise MemoryError(f"fake CUDA out of memory: tried to allocate {n} bytes")
            self._allocated += n
            self._peak = max(self._peak, self._allocated)

    def free(self, n: int) -> None:
        with self._lock:
            self._allocated -= n

    def alloc_untracked(self, n: int) -> None:
        """As a non-torch library (CTranslate2) would: the driver sees it, torch does not."""
        with self._lock:
            if self._allocated + self._foreign + n + self.other_process_bytes > self.total_bytes:
                raise MemoryError(f"fake CUDA out of memory: tried to allocate {n} bytes")
            self._foreign += n

    def free_untracked(self, n: int) -> None:
        with self._lock:
            self._foreign -= n

    def untracked(self) -> int:
        return self._foreign + self.other_process_bytes

    def total(self) -> int:
        return self.total_bytes

    def allocated(self) -> int:
        return self._allocated

    def driver_free(self) -> int:
        return self.total_bytes - self._allocated - self._foreign - self.other_process_bytes

    def peak(self) -> int:
        return self._peak

    def release_cache(self) -> None:
        self.release_calls += 1


def detect_probe() -> MemoryProbe:
    """CUDA when torch sees a GPU, CPU otherwise. Called by launch, never on import."""
    try:
        import torch

        if torch.cuda.is_available():
            return CudaProbe(0)
    except Exception:  # a broken CUDA install still gives a working CPU studio
        pass
    return CpuProbe()


def default_budget(probe: MemoryProbe) -> int:
    """The card's total minus a reserve for the desktop; on CPU, half the RAM."""
    if probe.device == "cuda":
        return max(probe.total() - DESKTOP_RESERVE, 0)
    return probe.total() // 2


def emulate_card(budget: int, index: int = 0) -> None:
    """Cap this process's CUDA allocations at `budget`, as on a smaller card (bench, tests)."""
    import torch

    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), index)


def is_oom(exc: BaseException) -> bool:
    """True for CUDA (or fake) out-of-memory errors, whatever library raised them."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except Exception:
        pass
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text and ("cuda" in text or "hip" in text or "alloc" in text)
