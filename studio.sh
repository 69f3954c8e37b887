#!/usr/bin/env bash
# OneGPU Studio, one command: makes .venv if it is missing, installs the locked versions
# (requirements.lock) when the lock changed since the last install, then starts the studio.
#
#   ./studio.sh [flags of launch.py]     install if needed, then run (e.g. ./studio.sh --share)
#   ./studio.sh --install-only           install if needed, run nothing (tests/run.sh uses this)
#   ./studio.sh --doctor                 what this machine has, and whether it fits
#
# STUDIO_PYTHON picks the interpreter that makes the venv (default: the first of python3.12,
# python3.11, python3.10, python3 that is 3.10-3.12, the versions the lock covers).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${STUDIO_VENV:-.venv}"

pick_python() {
  local c
  for c in ${STUDIO_PYTHON:-} python3.12 python3.11 python3.10 python3; do
    command -v "$c" >/dev/null 2>&1 || continue
    if "$c" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  PY="$(pick_python)" || {
    echo "OneGPU Studio needs CPython 3.10, 3.11 or 3.12 (the versions its lock file covers)." >&2
    echo "Install one (Debian/Ubuntu: apt install python3 python3-venv) or set STUDIO_PYTHON." >&2
    exit 1
  }
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    # Debian and Ubuntu ship Python without its venv module: add it once.
    if command -v apt-get >/dev/null 2>&1; then
      SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
      echo "Installing python3-venv (Debian/Ubuntu package, needed once)..."
      $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
        --no-install-recommends python3-venv || true
    fi
    if ! "$PY" -m venv "$VENV"; then
      rm -rf "$VENV"
      echo "Could not make a virtual environment with $PY." >&2
      echo "Install Python's venv module (Debian/Ubuntu: apt install python3-venv), then run" >&2
      echo "this again." >&2
      exit 1
    fi
  fi
fi

# Install when the lock (or this project's metadata) changed since the last install.
stamp="$VENV/.studio-lock-installed"
want="$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Installing the locked versions into $VENV (first time: about 7 GB, mostly CUDA libraries)..."
  "$VENV/bin/python" -m pip install -q --upgrade "pip>=24"
  "$VENV/bin/python" -m pip install -q -r requirements.lock
  "$VENV/bin/python" -m pip install -q --no-deps -e .
  echo "$want" >"$stamp"
fi

case "${1:-}" in
  --install-only) exit 0 ;;
  --doctor) shift; exec "$VENV/bin/python" -m studio.doctor "$@" ;;
esac
exec "$VENV/bin/python" launch.py "$@"
