#!/usr/bin/env bash
# Make requirements.lock: the exact version of every package, direct and transitive, for Linux
# x86-64 and CPython 3.10-3.12 (pyproject's [tool.uv] environments), resolved by uv.
#
#   bash tests/lock.sh             re-resolve after a change to pyproject.toml, keeping every
#                                  locked version that still fits
#   bash tests/lock.sh --upgrade   move to the newest versions pyproject.toml allows: resolve,
#                                  install into a scratch venv (build/upgrade-venv), run the whole
#                                  suite there, print the lock's diff. The new lock is kept only
#                                  if the suite passes (else it is left as requirements.lock.new)
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
TOOLS=build/lock-tools
if [ ! -x "$TOOLS/bin/uv" ]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install -q "uv==$UV_VERSION"
fi

compile() {  # compile OUT [extra uv flags]
  local out=$1; shift
  "$TOOLS/bin/uv" pip compile pyproject.toml --extra test --universal --fork-strategy fewest \
    --python-version 3.10 --no-header --quiet "$@" -o "$out"
  {
    echo "# OneGPU Studio's locked versions: made by 'bash tests/lock.sh' (uv $UV_VERSION) from"
    echo "# pyproject.toml. Install with ./studio.sh; never edit by hand."
    cat "$out"
  } >"$out.tmp" && mv "$out.tmp" "$out"
}

summary() {  # the package==version lines that changed
  diff <(grep -oE '^[A-Za-z0-9_.-]+==[^ ;]+' "$1" | sort -u) \
       <(grep -oE '^[A-Za-z0-9_.-]+==[^ ;]+' "$2" | sort -u) | grep -E '^[<>]' || true
}

if [ "${1:-}" != "--upgrade" ]; then
  mkdir -p build
  cp requirements.lock build/requirements.lock.old 2>/dev/null || : >build/requirements.lock.old
  compile requirements.lock
  echo "requirements.lock written. Changes (< old, > new):"
  summary build/requirements.lock.old requirements.lock
  exit 0
fi

mkdir -p build
cp requirements.lock requirements.lock.new
compile requirements.lock.new --upgrade
echo "Changes (< locked now, > newest):"
summary requirements.lock requirements.lock.new
cp requirements.lock build/requirements.lock.old
cp requirements.lock.new requirements.lock
rm -rf build/upgrade-venv
if STUDIO_VENV=build/upgrade-venv bash tests/run.sh --all; then
  rm requirements.lock.new
  echo "The suite passed on the new versions: requirements.lock now holds them. Review the diff"
  echo "(git diff requirements.lock) and commit it with the suite's result."
else
  cp build/requirements.lock.old requirements.lock
  echo "The suite failed on the new versions: requirements.lock is unchanged; the candidate is"
  echo "requirements.lock.new. Pin the package that broke in pyproject.toml (an upper bound with"
  echo "the reason), then run this again."
  exit 1
fi
