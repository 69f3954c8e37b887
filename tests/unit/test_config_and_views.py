"""Settings from flags and STUDIO_* variables; formatting helpers; logic never imports gradio."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from studio.config import format_bytes, parse_size, read_auth_file, settings_from_args
from studio.jobs import RunView
from studio.ui import views

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text,expected", [
    ("12GiB", 12 * 1024**3), ("11.5 GB", 11_500_000_000), ("800MiB", 800 * 1024**2),
    ("1024", 1024),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["twelve", "12 parsecs", "", "-3GiB"])
def test_parse_size_rejects_garbage(bad):
    with pytest.raises(ValueError, match="memory size"):
        parse_size(bad)


def test_format_bytes():
    assert format_bytes(5.4 * 1024**3) == "5.40 GiB"
    assert format_bytes(512) == "512 B"
    assert format_bytes(None) == "–"


def test_flags_win_over_environment(tmp_path):
    env = {"STUDIO_PORT": "9000", "STUDIO_HOME": str(tmp_path / "envhome"),
           "STUDIO_VRAM_BUDGET": "10GiB", "STUDIO_PROFILE": "small"}
    s = settings_from_args(["--port", "7999"], env)
    assert s.port == 7999 and s.home == (tmp_path / "envhome").resolve()
    assert s.vram_budget == 10 * 1024**3 and s.profile == "small"
    assert s.runs_dir == s.home / "runs"


def test_share_without_credentials_generates_a_password(tmp_path):
    s = settings_from_args(["--share", "--home", str(tmp_path)], {})
    assert s.share and s.generated_password
    user, password = s.auth[0]
    assert user == "studio" and len(password) >= 12
    s2 = settings_from_args(["--share", "--home", str(tmp_path)], {})
    assert s2.auth[0][1] != password  # not a fixed default


def test_auth_flag_and_file(tmp_path):
    f = tmp_path / "users.txt"
    f.write_text("# team\nann:secret1\n\nbob:secret2\n")
    s = settings_from_args(["--auth", "me:pw", "--auth-file", str(f), "--share"], {})
    assert s.auth == [("me", "pw"), ("ann", "secret1"), ("bob", "secret2")]
    assert not s.generated_password
    f.write_text("nocolon\n")
    with pytest.raises(ValueError, match="users.txt:1"):
        read_auth_file(f)
    with pytest.raises(SystemExit):  # argparse prints the usage and the reason
        settings_from_args(["--auth", "justauser"], {})


def test_bad_profile_or_budget_is_refused_with_a_message(capsys):
    with pytest.raises(SystemExit):
        settings_from_args(["--profile", "huge"], {})
    with pytest.raises(SystemExit):
        settings_from_args(["--vram-budget", "lots"], {})
    assert "not a memory size: 'lots'" in capsys.readouterr().err


def test_run_views_format():
    v = RunView(id="r1", kind="toy", title="Toy run", status="running", created=0.0,
                started=1.0, done=25, total=100, message="epoch 1", eta_seconds=125,
                metrics=[{"step": 1, "train_loss": 2.0}, {"step": 2, "train_loss": 1.5,
                                                           "val_loss": 1.8}])
    md = views.run_markdown(v)
    assert "ETA 2 min 05 s" in md and "running" in md
    assert "value='25.0'" in views.progress_html(v)
    df = views.metrics_frame(v, ("train_loss", "val_loss"))
    assert list(df["series"]) == ["train_loss", "train_loss", "val_loss"]
    assert views.metrics_frame(RunView("x", "k", "t", "queued", 0.0), ("loss",)) is None


def _logic_modules():
    for pkg in ("studio", "tabs"):
        for p in (ROOT / pkg).rglob("*.py"):
            rel = p.relative_to(ROOT)
            if p.name == "ui.py" or "ui" in rel.parts[1:-1] or rel.parts[1:] == ("app.py",):
                continue
            if p.name == "__init__.py" and p.parent.parent.name == "tabs":
                continue  # a tab's __init__ exposes build_ui, which imports its ui lazily
            yield p


def test_logic_modules_never_import_gradio():
    offenders = []
    for p in _logic_modules():
        tree = ast.parse(p.read_text(), filename=str(p))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "gradio" or n.startswith("gradio.") for n in names):
                offenders.append(str(p.relative_to(ROOT)))
    assert not offenders, f"logic modules import gradio: {offenders}"
    assert len(list(_logic_modules())) >= 8  # the walk really found the core modules


def test_a_tab_service_is_built_once_under_concurrent_first_requests(studio):
    import threading
    import time

    built = []

    def factory(s):
        time.sleep(0.05)  # a slow constructor widens the race
        built.append(s)
        return object()

    got = []
    threads = [threading.Thread(target=lambda: got.append(studio.service("x", factory)))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and len({id(g) for g in got}) == 1
