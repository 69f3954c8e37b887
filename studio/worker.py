"""``python -m studio.worker RUN_DIR``: run one job in this process and report through events.

The job is the function named by ``entry`` in ``run.json``, called as ``run(config, report)``.
SIGTERM sets ``report.should_stop()``; the job saves what it has and returns. A SIGTERM that
arrives before the job first asks `should_stop()` (imports, model loading) ends the worker at
once as cancelled.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import sys
import traceback
from pathlib import Path

from studio.config import quiet_telemetry
from studio.reporting import CancelledBeforeStart, Reporter


def seed_everything(seed: int) -> None:
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


def emulate_card_from_env() -> None:
    """``STUDIO_EMULATE_CARD=12GiB`` caps this job's CUDA memory as on a smaller card (the GPU
    machine's tests and benches run jobs as a 12 GB user would)."""
    cap = os.environ.get("STUDIO_EMULATE_CARD")
    if not cap:
        return
    import torch

    if torch.cuda.is_available():
        from studio.config import parse_size
        from studio.devices import emulate_card

        emulate_card(parse_size(cap))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m studio.worker RUN_DIR", file=sys.stderr)
        return 2
    quiet_telemetry()
    run_dir = Path(argv[0]).resolve()
    meta = json.loads((run_dir / "run.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    report = Reporter(run_dir, resume=meta.get("attempts", 1) > 1, install_signal=True)
    try:
        # A resumed attempt restarts from its checkpoint: the steps after it are replayed, and
        # the studio shows the new values in place of the old ones (EventTail).
        last = report.last_checkpoint() if report.resume else None
        report.status("running", pid=os.getpid(), attempt=meta.get("attempts", 1),
                      **({"resume_step": last[1] if last else 0} if report.resume else {}))
        report.log(f"attempt {meta.get('attempts', 1)} of run {meta['id']} ({meta['entry']})")
        emulate_card_from_env()
        if meta.get("seed") is not None:
            seed_everything(int(meta["seed"]))
        module_name, _, func_name = meta["entry"].partition(":")
        fn = getattr(importlib.import_module(module_name), func_name)
        fn(config, report)
    except CancelledBeforeStart:
        report.status("cancelled", early=True)
        report.log("cancelled before the job started its work; nothing to save")
        report.close()
        return 0
    except BaseException as e:  # noqa: BLE001 - every failure must reach the events file
        tb = traceback.format_exc()
        report.log(tb)
        msg = f"{type(e).__name__}: {e}"
        report.status("failed", error=msg[:2000])
        report.close()
        print(tb, file=sys.stderr)
        return 1
    if report.should_stop():
        report.status("cancelled")
        report.log("stopped on request; saved what existed")
    else:
        report.status("succeeded")
        report.log("finished")
    report.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
