#!/usr/bin/env bash
# Set up and open the Droplet app (it starts on its built-in demo image).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements.txt
exec .venv/bin/streamlit run app.py --browser.gatherUsageStats false "$@"
