"""Test set-up: offline everywhere, before any heavy import; shared fixtures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Set before torch/transformers/gradio/ultralytics are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "studio-yolo-cfg"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")  # chromadb
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")  # as studio.config.quiet_telemetry
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # onnxruntime, as studio.config

import pytest  # noqa: E402


def wait_for(cond, timeout: float = 30.0) -> bool:
    """Poll `cond` until it is true; raise TimeoutError if it never becomes true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    raise TimeoutError("condition not met in time")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def empty_cache(monkeypatch, tmp_path):
    """A hub cache with nothing in it (whatever this machine's own cache holds)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@contextmanager
def launch_py(*args: str, until: str, timeout: float = 240) -> Iterator[str]:
    """`python launch.py ARGS` as a user starts it, in a child process; yields its output up to
    the first line holding `until` (or its end, or `timeout` s); stopped after the block."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "launch.py", *args], cwd=Path(__file__).parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if until in line:
                break
        yield "".join(lines)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def studio(tmp_path):
    """A Studio on a fresh home folder, CPU probe, small profile, job scheduler running."""
    from studio.config import Settings
    from studio.context import build_studio

    s = build_studio(Settings(home=tmp_path / "home", profile="small"))
    yield s
    s.close()


def launch_studio(home, tab_modules=None, port=None):
    """Build and launch the real app on loopback; returns (studio, app, url)."""
    from studio.app import build_app, configure_queue, launch_kwargs
    from studio.config import Settings
    from studio.context import build_studio

    s = build_studio(Settings(home=home, profile="small", port=port or free_port()))
    app = build_app(s, tab_modules=tab_modules)
    configure_queue(app)  # the production queue settings, not a simpler one
    kw = launch_kwargs(s)
    app.launch(prevent_thread_lock=True, quiet=True, **kw)
    return s, app, app.local_url


def stop_studio(s, app):
    app.close()
    s.close()
    time.sleep(0.2)


@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    """A launched studio (all tabs) and a gradio_client Client connected to it."""
    from gradio_client import Client

    s, app, url = launch_studio(tmp_path_factory.mktemp("apphome"))
    client = Client(url, verbose=False)
    yield client, s
    stop_studio(s, app)
