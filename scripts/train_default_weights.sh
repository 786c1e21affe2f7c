#!/usr/bin/env bash
# Rebuild weights/clinreadnet-sim.safetensors from the real CT sources, and train the plain
# swin_t baseline with the same data and budget. Every step is resumable: re-run the script
# and finished steps are skipped, an interrupted training run continues from its last epoch.
#
#   bash scripts/train_default_weights.sh [SOURCES] [WORK]
#
# SOURCES: normal-dose CT (default ../shared/data/ct_sources); WORK: where the simulated data
# and the runs go (default work/, ignored by git). Wall time on a 2-core CPU: simulation
# ~18 min, training ~1 h (clinreadnet) and ~35 min (swin_t) with bf16 (see weights/MODEL_CARD.md).
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCES=${1:-../shared/data/ct_sources}
WORK=${2:-work}
CLI=${CLINREADNET:-.venv/bin/clinreadnet}
PY=${PYTHON:-.venv/bin/python}

[ -f "$WORK/sim/train.json" ] || "$CLI" simulate --source "$SOURCES" --out "$WORK/sim" --seed 0 --overwrite

for model in clinreadnet swin_t; do
  run="$WORK/runs/$model"
  if [ -f "$run/last_state.safetensors" ]; then
    "$CLI" train --resume --out "$run" --config scripts/default_weights.toml
  else
    "$CLI" train --config scripts/default_weights.toml --data "$WORK/sim" --model "$model" --out "$run"
  fi
  "$CLI" evaluate --data "$WORK/sim" --split val --weights "$run/best.safetensors" --format json \
    > "$WORK/runs/$model-val.json"
done

"$PY" scripts/export_weights.py "$WORK/runs/clinreadnet/best.safetensors" weights/clinreadnet-sim.safetensors
cat "$WORK/runs/clinreadnet-val.json" "$WORK/runs/swin_t-val.json"
