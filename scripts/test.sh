#!/usr/bin/env bash
# Set up, lint and run the whole test suite, including the real-browser test (Debian's chromium).
# Arguments go to pytest: `bash scripts/test.sh -m "not slow"` is the quick loop (no fits, app or browser).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements-dev.txt
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: /usr/bin/chromium is missing and we are not root; the browser test will be skipped" >&2
  fi
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Two workers, each test file on one of them (module fixtures are computed once): the suite
# takes about two thirds of the time of one process on 2 cores. Each worker starts its own JAX;
# on a GPU machine neither may take most of the GPU's memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
