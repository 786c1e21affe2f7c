#!/usr/bin/env bash
# Rebuild weights/clinreadnet-sim-v2.safetensors from the real CT sources and check it on
# held-out patients degraded by two other simulators. Every step is resumable: re-run the script
# and finished steps are skipped, an interrupted training run continues from its last epoch.
#
#   bash scripts/train_default_weights.sh [SOURCES] [WORK]
#
# SOURCES: normal-dose CT (default ../shared/data/ct_sources); WORK: where the simulated data
# and the runs go (default work/, ignored by git). Wall time on a 2-core CPU: simulation
# ~46 min, training ~60 min with bf16, checks ~15 min (see weights/MODEL_CARD.md).
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCES=${1:-../shared/data/ct_sources}
WORK=${2:-work}
CLI=${CLINREADNET:-.venv/bin/clinreadnet}
PY=${PYTHON:-.venv/bin/python}

# Both reconstructions from the same projections: the degradation added to the source (its own
# kernel) and full FBP images with a filter drawn per slice; electronic noise drawn per slice.
[ -f "$WORK/sim/train.json" ] || "$CLI" simulate --source "$SOURCES" --out "$WORK/sim" --seed 0 --overwrite \
  --mode both --full-filters ram-lak,shepp-logan,cosine,hann,hann:0.5 --electronic-noise 5,20
"$PY" scripts/label_ordering.py "$WORK/sim"

run="$WORK/runs/clinreadnet-v2"
if [ -f "$run/last_state.safetensors" ]; then
  "$CLI" train --resume --out "$run" --config scripts/default_weights.toml
else
  "$CLI" train --config scripts/default_weights.toml --data "$WORK/sim" --model clinreadnet --out "$run"
fi
"$CLI" evaluate --data "$WORK/sim" --split val --weights "$run/best.safetensors" --format json \
  > "$WORK/runs/clinreadnet-v2-val.json"
"$PY" scripts/export_weights.py "$run/best.safetensors" weights/clinreadnet-sim-v2.safetensors
"$PY" scripts/ordering_check.py --data "$WORK/sim" --split "$run/split.json" --per-patient 1 \
  --weights weights/clinreadnet-sim-v2.safetensors --weights weights/clinreadnet-sim.safetensors
cat "$WORK/runs/clinreadnet-v2-val.json"
