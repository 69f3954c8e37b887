"""A booby-trapped pickle for the hostile-input tests: loading it with a full unpickler creates
a canary file. Every model field must refuse it (or load it with weights_only=True, which
refuses it too), so the canary file never appears."""

from __future__ import annotations

import os
import pickle
from pathlib import Path


class _Trap:
    def __init__(self, canary: Path):
        self.canary = str(canary)

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


def write_canary_pickle(path: Path, canary: Path, torch_zip: bool = False) -> Path:
    """A pickle at `path` that would create `canary` when unpickled. With `torch_zip`, in the
    torch.save zip format (what .pt/.bin checkpoints use)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if torch_zip:
        import torch

        torch.save({"model": _Trap(canary)}, path)
    else:
        path.write_bytes(pickle.dumps({"state_dict": _Trap(canary)}, protocol=4))
    return path
