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


def with_child(config, report):
    """Starts a helper process in its own group (as a DataLoader worker is) that notes any
    SIGTERM; on cancel it checks the helper was left alone, then ends it as a framework
    would."""
    import subprocess
    import sys

    flag = report.run_dir / "child_got_sigterm"
    child = subprocess.Popen([sys.executable, "-c",
                              "import signal, time, pathlib, sys\n"
                              f"p = pathlib.Path({str(flag)!r})\n"
                              "signal.signal(signal.SIGTERM, lambda *a: (p.write_text('1'), "
                              "sys.exit(0)))\n"
                              "time.sleep(120)\n"])
    while not report.should_stop():
        report.progress(1, 2)
        time.sleep(0.05)
    time.sleep(0.3)  # a group signal would have reached it by now
    (report.run_dir / "child_alive_at_stop").write_text(str(child.poll() is None and
                                                            not flag.exists()))
    child.kill()
    child.wait()


def slow_poller(config, report):
    """Looks at should_stop only every `poll` seconds, then takes `save` seconds to save."""
    while not report.should_stop():
        time.sleep(config["poll"])
    if config.get("ask_grace"):
        report.stopping(grace_s=config["ask_grace"])
    time.sleep(config["save"])
    (report.run_dir / "saved.txt").write_text("ok")


def slow_start(config, report):
    """A long model load before the training loop ever asks should_stop()."""
    (report.run_dir / "loading").write_text("1")
    time.sleep(60)
    while not report.should_stop():
        time.sleep(0.05)


def crash_while_saving(config, report):
    while not report.should_stop():
        report.progress(1, 2)
        time.sleep(0.05)
    (report.run_dir / "half.bin").write_bytes(b"\0" * 10)
    os.kill(os.getpid(), signal.SIGKILL)  # dies in the middle of its final save
