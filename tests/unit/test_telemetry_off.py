"""Library telemetry is off whether or not --offline is given (the network-namespace test in
tests/app/test_network_offline.py proves the whole studio; this checks the switches quickly)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from studio.config import TELEMETRY_OFF, quiet_telemetry

ROOT = Path(__file__).resolve().parents[2]


def test_every_library_switch_is_in_the_list():
    env: dict[str, str] = {"HF_HUB_DISABLE_TELEMETRY": "0"}  # a user's own choice wins
    quiet_telemetry(env)
    assert env["ORT_DISABLE_TELEMETRY"] == "1", "onnxruntime (faster-whisper's VAD)"
    assert env["ANONYMIZED_TELEMETRY"] == "False" and env["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert env["HF_HUB_DISABLE_TELEMETRY"] == "0"
    assert {"PYANNOTE_METRICS_ENABLED", "YOLO_AUTOINSTALL"} <= set(TELEMETRY_OFF)


def test_ultralytics_sync_is_off_and_its_font_is_local_without_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "PYTEST"))}
    code = ("import sys; from pathlib import Path; from tabs.yolo.train import "
            "configure_ultralytics; configure_ultralytics(Path(sys.argv[1]), offline=False); "
            "from ultralytics.utils import SETTINGS, USER_CONFIG_DIR; "
            "print(SETTINGS['sync'], (USER_CONFIG_DIR / 'Arial.ttf').exists(), "
            "(USER_CONFIG_DIR / 'Arial.Unicode.ttf').exists())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["False", "True", "True"], out.stdout
