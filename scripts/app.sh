#!/usr/bin/env bash
# Set up and open the Droplet app (it starts on its built-in demo image).
#   bash scripts/app.sh [--scheduler tcp://HOST:8786] [streamlit options ...]
# --scheduler (or DROPLET_SCHEDULER) runs the app's fits on that Dask cluster; see README "A lab server".
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--scheduler" ]; then
  export DROPLET_SCHEDULER="$2"
  shift 2
fi
bash scripts/setup.sh requirements.txt
exec .venv/bin/streamlit run app.py --browser.gatherUsageStats false "$@"
