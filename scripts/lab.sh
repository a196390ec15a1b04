#!/usr/bin/env bash
# A lab server on this machine: a Dask scheduler, two Dask workers, and the app, whose fits
# (single fits, continued and reuse fits, batches) all run on those workers.
#
#   bash scripts/lab.sh [--port 8501] [--scheduler-port 8786] [--workers 2] [streamlit options ...]
#
# DROPLET_STORE (default ./.droplet-store) is the folder app and workers share; set
# DROPLET_LAB_PASSWORD to ask for a lab password, DROPLET_SESSION_LIMIT for the fits one
# session may queue (default 3), DROPLET_MAX_UPLOAD_MB (default 200) and DROPLET_MAX_PIXELS
# for upload limits. DROPLET_PYTHON names a Python that has the requirements already
# (then nothing is installed). Ctrl-C stops all of it.
set -euo pipefail
cd "$(dirname "$0")/.."
port=8501
scheduler_port=8786
workers=2
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --scheduler-port) scheduler_port="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    *) break ;;
  esac
done
python="${DROPLET_PYTHON:-}"
if [ -z "$python" ]; then
  bash scripts/setup.sh requirements.txt
  python=.venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the workers unpickle droplet_core's tasks
export DROPLET_STORE="$(realpath -m "${DROPLET_STORE:-.droplet-store}")"
mkdir -p "$DROPLET_STORE"
scheduler="tcp://127.0.0.1:$scheduler_port"

pids=()
stop_all() {
  trap - EXIT INT TERM
  [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
  wait 2>/dev/null || true
}
trap stop_all EXIT INT TERM

"$python" -m dask scheduler --host 127.0.0.1 --port "$scheduler_port" --no-dashboard &
pids+=($!)
for i in $(seq 1 "$workers"); do
  "$python" -m dask worker "$scheduler" --nthreads 1 --name "lab-worker-$i" --no-dashboard &
  pids+=($!)
done
echo "lab server: scheduler $scheduler, $workers workers, store $DROPLET_STORE" >&2
DROPLET_SCHEDULER="$scheduler" "$python" -m streamlit run app.py --server.port "$port" \
  --server.maxUploadSize "${DROPLET_MAX_UPLOAD_MB:-200}" --browser.gatherUsageStats false "$@" &
pids+=($!)
wait "${pids[-1]}"
