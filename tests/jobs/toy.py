"""Toy jobs for the job-lifecycle tests: they run in a real `studio.worker` child process."""

from __future__ import annotations

import json
import os
import signal
import time


def count(config, report):
    """Counts to `steps`, a checkpoint every `every` steps; resumes from the last checkpoint."""
    start = 0
    last = report.last_checkpoint()
    if last is not None:
        start = json.loads(last[0].read_text())["step"]
        report.log(f"resuming from step {start}")
    for step in range(start + 1, config["steps"] + 1):
        if report.should_stop():
            report.log("stop requested")
            break
        time.sleep(config.get("sleep", 0.05))
        report.progress(step, config["steps"], f"step {step}")
        report.metrics(step, train_loss=1.0 / step)
        if step % config.get("every", 5) == 0:
            ck = report.run_dir / "ckpt.json"
            ck.write_text(json.dumps({"step": step}))
            report.checkpoint(ck, step)
    (report.run_dir / "seen.txt").open("a").write(f"{os.getpid()} {start}\n")


def boom(config, report):
    report.progress(1, 3)
    raise ValueError("bad learning rate")


def hard_crash(config, report):
    report.progress(1, 3)
    os.kill(os.getpid(), signal.SIGKILL)  # like a segfault or the OOM killer: no last words


def silent_exit(config, report):
    os._exit(0)  # exits "cleanly" without ever reporting success


def stubborn(config, report):
    """Ignores the cancel request: must be killed after the grace period."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    (report.run_dir / "pid.txt").write_text(str(os.getpid()))
    while True:
        time.sleep(0.05)
