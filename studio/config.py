"""Settings: every flag and STUDIO_* variable in one typed object.

Nothing here probes the device or reads argv on import; `settings_from_args` is called by
`launch.py` (or a test) with explicit arguments.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}

PROFILES = ("small", "full")

# Libraries that report usage to their makers unless told not to. A local studio keeps quiet;
# a user can still opt in by setting the variable themselves.
TELEMETRY_OFF = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "ANONYMIZED_TELEMETRY": "False",  # chromadb
    "PYANNOTE_METRICS_ENABLED": "0",  # pyannote.audio sends OpenTelemetry metrics otherwise
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "ORT_DISABLE_TELEMETRY": "1",  # onnxruntime (faster-whisper's VAD) looks up its host
    "DO_NOT_TRACK": "1",  # the common opt-out (Gradio, and libraries that honour it)
    "YOLO_AUTOINSTALL": "false",  # Ultralytics never pip-installs; its "sync" is turned off
    "DISABLE_TELEMETRY": "1",  # diffusers / huggingface libraries' older switch
}


def quiet_telemetry(env: dict | None = None) -> None:
    """Turn library telemetry off (before those libraries are imported)."""
    target = os.environ if env is None else env
    for k, v in TELEMETRY_OFF.items():
        target.setdefault(k, v)


def parse_size(text: str) -> int:
    """Parse a memory size such as ``12GiB``, ``11.5 GB`` or ``800MiB`` into bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a memory size: {text!r} (try e.g. 12GiB or 11.5GB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: int | float | None) -> str:
    """Human-readable bytes in binary units, as the ledger shows them."""
    if n is None:
        return "–"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover


@dataclass
class Settings:
    """What the studio was started with. Paths all live under ``home``."""

    home: Path
    host: str = "127.0.0.1"
    port: int = 7860
    vram_budget: int | None = None  # bytes; None = device total minus desktop reserve
    profile: str | None = None  # None = "full" with CUDA, "small" without
    offline: bool = False
    share: bool = False
    auth: list[tuple[str, str]] = field(default_factory=list)
    generated_password: bool = False
    chroma_url: str | None = None
    # Most bytes one uploaded archive may unpack to (zip bombs are refused before writing).
    extract_budget: int = 2 * 1024**3

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def indexes_dir(self) -> Path:
        return self.home / "indexes"

    @property
    def exports_dir(self) -> Path:
        return self.home / "exports"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    def make_dirs(self) -> None:
        for d in (self.runs_dir, self.uploads_dir, self.indexes_dir, self.exports_dir,
                  self.cache_dir):
            d.mkdir(parents=True, exist_ok=True)


def _loopback(host: str) -> bool:
    from studio.security import is_loopback

    return is_loopback(host)


def _parse_auth(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError("credentials must look like user:password")
    return user, password


def read_auth_file(path: Path) -> list[tuple[str, str]]:
    """One ``user:password`` per line; blank lines and ``#`` comments ignored."""
    pairs = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            pairs.append(_parse_auth(line))
        except ValueError as e:
            raise ValueError(f"{path}:{n}: {e}") from None
    if not pairs:
        raise ValueError(f"{path}: no user:password lines")
    return pairs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="launch.py",
        description="OneGPU Studio: the local AI studio for one consumer GPU.",
        epilog="Every flag can also be set with an environment variable STUDIO_<FLAG> "
        "(e.g. STUDIO_PORT=7861, STUDIO_SHARE=1).",
    )
    p.add_argument("--host", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 7860)")
    p.add_argument("--home", help="folder for everything the studio writes (default ./studio_home)")
    p.add_argument("--vram-budget", help="GPU memory the studio may use, e.g. 12GiB "
                   "(default: the card's total minus a reserve for the desktop)")
    p.add_argument("--profile", choices=PROFILES,
                   help="model set: 'full' (7-8B 4-bit, for a 12 GB card) or 'small' (CPU-friendly,"
                   " offline weights); default full with CUDA, small without")
    p.add_argument("--offline", action="store_true", default=None,
                   help="never contact a model hub or package registry")
    p.add_argument("--share", action="store_true", default=None,
                   help="open a public Gradio link (a password is generated if none is given)")
    p.add_argument("--auth", help="user:password required to open the app")
    p.add_argument("--auth-file", help="file with one user:password per line")
    p.add_argument("--chroma-url", help="use a Chroma server (http://host:port) instead of the "
                   "embedded store")
    p.add_argument("--extract-budget", help="most bytes one uploaded archive may unpack to, "
                   "e.g. 2GiB (default); larger archives and zip bombs are refused")
    p.add_argument("--doctor", action="store_true",
                   help="print what this machine has and whether it fits, then exit")
    return p


def _truthy(v: str | None) -> bool | None:
    if v is None or v == "":
        return None
    return v.strip().lower() in ("1", "true", "yes", "on")


def settings_from_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Settings:
    """Flags win over ``STUDIO_*`` variables, which win over defaults."""
    env = os.environ if env is None else env
    parser = build_parser()
    a = parser.parse_args(list(argv))
    try:
        return _settings(a, env)
    except (ValueError, OSError) as e:  # bad size, credentials or auth file: a reason, no traceback
        parser.error(str(e))


def _settings(a: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    def pick(flag, name, conv=str):
        if flag is not None:
            return flag
        v = env.get(f"STUDIO_{name}")
        return conv(v) if v not in (None, "") else None

    home = Path(pick(a.home, "HOME") or "studio_home").expanduser().resolve()
    budget_text = pick(a.vram_budget, "VRAM_BUDGET")
    profile = pick(a.profile, "PROFILE")
    if profile is not None and profile not in PROFILES:
        raise SystemExit(f"--profile must be one of {PROFILES}, not {profile!r}")
    s = Settings(
        home=home,
        host=pick(a.host, "HOST") or "127.0.0.1",
        port=int(pick(a.port, "PORT") or 7860),
        vram_budget=parse_size(budget_text) if budget_text else None,
        profile=profile,
        offline=bool(a.offline or _truthy(env.get("STUDIO_OFFLINE"))),
        share=bool(a.share or _truthy(env.get("STUDIO_SHARE"))),
        chroma_url=pick(a.chroma_url, "CHROMA_URL"),
    )
    extract_text = pick(a.extract_budget, "EXTRACT_BUDGET")
    if extract_text:
        s.extract_budget = parse_size(extract_text)
    auth_text = pick(a.auth, "AUTH")
    auth_file = pick(a.auth_file, "AUTH_FILE")
    if auth_text:
        s.auth.append(_parse_auth(auth_text))
    if auth_file:
        s.auth.extend(read_auth_file(Path(auth_file)))
    if (s.share or not _loopback(s.host)) and not s.auth:
        # A public link, or an address other machines can reach, with no password would hand
        # the GPU (and the files) to anyone who finds it.
        s.auth = [("studio", secrets.token_urlsafe(12))]
        s.generated_password = True
    return s
