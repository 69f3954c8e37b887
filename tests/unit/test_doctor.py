"""The doctor: installed library pairs that refuse adapters are caught before a user meets them,
and the test environment is the locked one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from studio import doctor
from tests.conftest import free_port, launch_py

ROOT = Path(__file__).resolve().parents[2]


def fake_versions(**versions):
    table = {doctor._canon(k): v for k, v in versions.items()}
    return lambda name: table.get(doctor._canon(name))


def test_installed_transformers_and_peft_can_attach_adapters():
    """Fails when the environment holds a pair known to refuse adapters (e.g. transformers 5.24
    with PEFT 0.21), whether it is in our list of breaks or transformers' own PEFT floor."""
    assert doctor.known_breaks() == []
    floor = doctor.transformers_peft_floor()
    assert floor is not None, "could not read MIN_PEFT_VERSION from the installed transformers"
    assert doctor._in(doctor.installed("peft"), f">={floor}"), (floor, doctor.installed("peft"))
    pair = [c for c in doctor.library_checks(peft_floor=floor) if c.name.startswith("library")]
    assert [c.status for c in pair] == ["ok"], pair


def test_the_mismatched_pair_from_the_issue_is_named_in_plain_words():
    have = fake_versions(transformers="5.24.0", peft="0.21.2")
    checks = doctor.library_checks(have=have, pins={}, peft_floor=None)
    fails = [c for c in checks if c.status == "fail"]
    assert len(fails) == 1
    assert "transformers 5.24.0 needs PEFT >= 0.22" in fails[0].detail
    assert "adapters will not load" in fails[0].detail
    # transformers' own floor catches a break that is not in the list yet
    have = fake_versions(transformers="5.30.0", peft="0.23.0")
    fails = [c for c in doctor.library_checks(have=have, pins={}, peft_floor="0.25.0")
             if c.status == "fail"]
    assert len(fails) == 1 and "needs PEFT >= 0.25.0" in fails[0].detail
    # a good pair passes
    have = fake_versions(transformers="5.20.2", peft="0.21.2")
    assert not [c for c in doctor.library_checks(have=have, pins={}, peft_floor="0.20.0")
                if c.status == "fail"]


def test_lock_lines_apply_by_marker_and_differences_are_listed(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "# header\n"
        "torch==2.11.0 ; sys_platform == 'linux'\n"
        "    # via onegpu-studio\n"
        "numpy==2.2.6 ; python_full_version < '3.11'\n"
        "numpy==2.4.6 ; python_full_version >= '3.11'\n"
        "peft==0.21.2\n")
    env = {"python_full_version": "3.11.7", "sys_platform": "linux"}
    pins = doctor.read_lock(lock, env=env)
    assert pins == {"torch": "2.11.0", "numpy": "2.4.6", "peft": "0.21.2"}
    have = fake_versions(torch="2.11.0+cu130", numpy="2.4.6", peft="0.22.0")
    assert doctor.lock_differences(pins, have) == ["peft 0.22.0 (lock: 0.21.2)"]
    warn = [c for c in doctor.library_checks(have=have, pins=pins) if c.name == "lock"]
    assert warn[0].status == "warn" and "peft 0.22.0 (lock: 0.21.2)" in warn[0].detail


def test_the_test_environment_is_the_locked_one():
    """The README's commands install requirements.lock exactly; drift shows up here."""
    pins = doctor.read_lock()
    assert len(pins) > 150
    for name in ("torch", "transformers", "peft", "diffusers", "gradio", "bitsandbytes"):
        assert name in pins
    assert doctor.lock_differences(pins) == []


def test_the_lock_is_exact_and_covers_python_310_to_312():
    text = (ROOT / "requirements.lock").read_text()
    reqs = [line for line in text.splitlines() if line and not line.lstrip().startswith("#")]
    assert reqs and all("==" in r for r in reqs), [r for r in reqs if "==" not in r][:5]
    for minor in (10, 11, 12):
        env = {"python_full_version": f"3.{minor}.4", "python_version": f"3.{minor}",
               "sys_platform": "linux", "platform_machine": "x86_64"}
        pins = doctor.read_lock(env=env)
        assert {"torch", "transformers", "peft", "gradio"} <= set(pins), minor


def test_banner_lists_problems_and_nothing_when_all_is_well():
    from studio.app import doctor_banner

    assert doctor_banner([]) == ""
    text = doctor_banner([doctor.Check("library pair", "fail", "transformers 5.24.0 needs PEFT")])
    assert "library pair" in text and "needs PEFT" in text and "--doctor" in text


@pytest.mark.slow
def test_launch_doctor_and_our_own_startup_banner(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, "launch.py", "--doctor", "--home", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    for word in ("python", "torch", "libraries", "library pairs", "lock", "disk"):
        assert f"] {word}:" in out.stdout, out.stdout

    port = free_port()
    with launch_py("--port", str(port), "--home", str(tmp_path / "home"), "--profile", "small",
                   "--offline", until="To share it with others") as text:
        assert f"OneGPU Studio is running at http://127.0.0.1:{port}" in text, text
        assert "share=True" not in text and "kernels-community" not in text, text


def test_the_readme_commands_and_ci_install_only_from_the_lock():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quickstart")[1].split("\n## ")[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", quick, re.S)
    assert blocks == ["./studio.sh", "bash tests/run.sh"], blocks
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash tests/run.sh" in ci and "pip install" not in ci
    run = (ROOT / "tests" / "run.sh").read_text()
    assert "./studio.sh --install-only" in run and "pip install -q -e" not in run
    setup = (ROOT / "studio.sh").read_text()
    assert "pip install -q -r requirements.lock" in setup
    assert "pip install -q --no-deps -e ." in setup  # the project itself adds no versions
