#!/usr/bin/env bash
# Rebuild weights v2 (WORK/clinreadnet-sim-v2.safetensors; the release is in the git history at commit 4a31dea)
# from the real CT sources, starting from v1 (at commit 4a31dea, fetched into WORK), and check it on
# held-out patients degraded by two other simulators. Every step is resumable: re-run the script
# and finished steps are skipped, an interrupted training stage continues from its last epoch.
#
#   bash research/train_default_weights.sh [SOURCES] [WORK]
#
# SOURCES: normal-dose CT (default ../shared/data/ct_sources); WORK: where the simulated data
# and the runs go (default work/, ignored by git). Wall time on a 2-core CPU with bf16: simulation
# ~50-80 min, four training stages of 2-3 epochs at ~20-25 min an epoch (~4 h), checks ~15 min
# (weights/MODEL_CARD.md, "Weights v2"). The stages are the attempts the card reports, each
# starting from the one before: a GPU runs them in minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCES=${1:-../shared/data/ct_sources}
WORK=${2:-work}
CLI=${CLINREADNET:-.venv/bin/clinreadnet}
PY=${PYTHON:-.venv/bin/python}
OPTIONS=research/recipes
V1="$WORK/clinreadnet-sim.safetensors"  # weights v1, the first stage's start
mkdir -p "$WORK"
[ -f "$V1" ] || { git show 4a31dea:weights/clinreadnet-sim.safetensors > "$V1.partial" && mv "$V1.partial" "$V1"; }

# Both reconstructions from the same projections: the degradation added to the source (its own
# kernel) and full FBP images with a filter drawn per slice; electronic noise drawn per slice.
[ -f "$WORK/sim/train.json" ] || "$CLI" simulate --source "$SOURCES" --out "$WORK/sim" --seed 0 --overwrite \
  --mode both --full-filters ram-lak,shepp-logan,cosine,hann,hann:0.5 --electronic-noise 5,20
"$PY" scripts/label_ordering.py "$WORK/sim"

# The same images with source-unit labels (degradation in HU over the untouched source's noise).
if [ ! -f "$WORK/sim-source/train.json" ]; then
  mkdir -p "$WORK/sim-source"
  ln -sfn "$(cd "$WORK/sim" && pwd)/image" "$WORK/sim-source/image"
  cp "$WORK/sim/manifest.csv" "$WORK/sim-source/manifest.csv"
  "$PY" scripts/label_ordering.py "$WORK/sim" --unit source --write "$WORK/sim-source/train.json"
fi

# stage NAME DATA [train flags...]: train one stage unless it finished, resuming an interrupted one.
stage() {
  local name=$1 data=$2 run="$WORK/runs/$1"
  shift 2
  local epochs
  epochs=$(sed -n 's/^epochs = //p' "$OPTIONS/$name.toml")
  if [ -f "$run/metrics.jsonl" ] && [ "$(wc -l < "$run/metrics.jsonl")" -ge "$epochs" ]; then
    return
  elif [ -f "$run/last_state.safetensors" ]; then
    "$CLI" train --resume --out "$run" --config "$OPTIONS/$name.toml"
  else
    "$CLI" train --config "$OPTIONS/$name.toml" --data "$data" --model clinreadnet --out "$run" --overwrite "$@"
  fi
}
runs="$WORK/runs"
stage stage1 "$WORK/sim" --init-weights "$V1"
stage stage2 "$WORK/sim" --init-weights "$runs/stage1/best.safetensors" --split-file "$runs/stage1/split.json"
stage stage3 "$WORK/sim-source" --init-weights "$runs/stage2/best.safetensors" --split-file "$runs/stage1/split.json"
"$PY" research/repeat_untouched.py "$runs/stage1/split.json" "$WORK/sim/manifest.csv" --times 5 \
  --out "$runs/untouched-x5-split.json"
stage stage4 "$WORK/sim-source" --init-weights "$runs/stage3/best.safetensors" \
  --split-file "$runs/untouched-x5-split.json"

run="$runs/stage4"
"$CLI" evaluate --run "$run" --split val --format json --predictions "$runs/v2-val-predictions.csv" \
  > "$runs/v2-val.json"
"$PY" scripts/label_ordering.py "$WORK/sim" --predictions "$runs/v2-val-predictions.csv"
"$PY" scripts/export_weights.py "$run/best.safetensors" "$WORK/clinreadnet-sim-v2.safetensors"
"$PY" scripts/ordering_check.py --data "$WORK/sim" --split "$run/split.json" --per-patient 1 \
  --weights "$WORK/clinreadnet-sim-v2.safetensors" --weights "$V1"
