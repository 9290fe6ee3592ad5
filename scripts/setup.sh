#!/usr/bin/env bash
# Sets up a fresh machine for augassets: Debian data packages (where apt is available), a virtualenv in
# .venv with the pinned Python packages, and the package itself (editable). Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DEBIAN_PACKAGES="dataset-fashion-mnist wordnet-base chromium chromium-driver postgresql redis-server"

missing=""
for package in $DEBIAN_PACKAGES; do
  dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
done
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing Debian packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "setup: apt-get is not available; install these by other means:$missing" >&2
    echo "  Fashion-MNIST: put the four *-ubyte.gz files in a folder and set AUGASSETS_FASHION_MNIST_DIR" >&2
    echo "  WordNet 3.0:   put its dict folder (data.noun, index.noun …) somewhere and set AUGASSETS_WORDNET_DIR" >&2
    echo "  Chromium:      only the browser test needs it; it is skipped without it" >&2
    echo "  PostgreSQL:    the scale tests start a throwaway server from its binaries (/usr/lib/postgresql/<major>/bin)" >&2
    echo "  Redis:         the Celery scale test starts a throwaway redis-server (on PATH)" >&2
  fi
fi

STAMP=.venv/.augassets-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  # torch/torchvision are pinned in pyproject.toml; keep them first so no other package pulls a newer one.
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/pip install -q -e '.[test]'
  touch "$STAMP"
fi
echo "setup: ready (.venv)"
