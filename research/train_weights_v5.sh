#!/usr/bin/env bash
# A one-forward candidate for weights v5, v4 distilled in two stages (by default the thirty-ninth attempt: one sampling grid plus the detail channel,
# the channel trained alone first (weights/ATTEMPTS.md, thirty-ninth attempt: not shipped), then
# checked beside v4 on the held-out patients and the two other simulators. Finished steps are skipped
# when the script is re-run; an interrupted training run resumes.
#
#   bash research/train_weights_v5.sh [SOURCES] [WORK] [FIRST SECOND]
#
# FIRST, SECOND: the two stages' recipes in research/recipes (default the thirty-ninth attempt's,
# v5-detail-alone.toml and v5-detail-then-all.toml; the forty-second's: v5-stack-embedding-2epoch.toml
# v5-stack-then-all.toml; the forty-third's: MIX=mix-all with v5-stack-embedding.toml v5-stack-then-all.toml;
# the forty-fourth's: the same with v5-stack-then-all-rank.toml; the forty-sixth's: v5-stack-other-grids.toml
# none). SECOND none exports the first stage alone.
# OTHER_SIMULATORS=0 skips the other-simulator check;
# TRAIN_FLAGS go to each `train` (--no-amp on a CPU without bf16).
# SOURCES: normal-dose CT (default ../shared/data/ct_sources); WORK: simulated data and runs (default
# work/, ignored by git). On a 2-core CPU with AVX512-BF16: simulations ~16 min, the teacher's
# distributions ~12-23 min (reused when a run folder holds them), each stage's two epochs ~9-12 min, held-out evaluation ~5 min, other-simulator check ~35 min
# (its images are cached in WORK/ordering_cache for later weights). bf16 training is not
# bit-reproducible, so a rebuild gives nearby weights, not the same file.
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCES=${1:-../shared/data/ct_sources}
WORK=${2:-work}
CLI=${CLINREADNET:-.venv/bin/clinreadnet}
PY=${PYTHON:-.venv/bin/python}
V4=weights/clinreadnet-sim-v4.safetensors
V5="$WORK/clinreadnet-sim-v5.safetensors"
# MIX: the training mix, mix25 or mix-all (every training slice: the forty-third attempt); either
# way the same held-out data (scripts/weights_data.sh builds both).
export MIX=${MIX:-mix25}
bash scripts/weights_data.sh "$SOURCES" "$WORK"  # held-out and training simulations, labels, the mix

# Two stages, each toward v4's four-grid distributions (train --distil-from): the detail channel's
# patch-embedding weights alone on v4's frozen tensors, then every layer. The teacher's
# distributions, computed in the first run folder, are copied into the second.
train_stage() {  # RECIPE INIT RUN
  local recipe=$1 init=$2 run=$3
  if [ ! -f "$run/metrics.jsonl" ] || [ "$(wc -l < "$run/metrics.jsonl")" -lt 2 ]; then
    local resume=(); [ -f "$run/last_state.safetensors" ] && resume=(--resume)
    "$CLI" train --config "research/recipes/$recipe" --data "$WORK/$MIX" \
      --split-file "$WORK/$MIX/split.json" --init-weights "$init" --out "$run" "${resume[@]}" ${TRAIN_FLAGS:-}
  fi
}
FIRST=${3:-v5-detail-alone.toml}
SECOND=${4:-v5-detail-then-all.toml}
STAGE1="$WORK/runs/${FIRST%.toml}"
RUN="$WORK/runs/${SECOND%.toml}"
train_stage "$FIRST" "$V4" "$STAGE1"
if [ "$SECOND" = none ]; then
  RUN=$STAGE1
else
  mkdir -p "$RUN"; [ -f "$RUN/teacher.safetensors" ] || cp "$STAGE1/teacher.safetensors" "$RUN/"
  train_stage "$SECOND" "$STAGE1/best.safetensors" "$RUN"
fi
"$PY" scripts/export_weights.py "$RUN/best.safetensors" "$V5"

# Held-out patients (reference-unit labels): v5 here; v4's report is benchmarks/results/heldout_v4.md.
"$CLI" evaluate --data "$WORK/sim_val-ref" --split val --split-file "$WORK/val-all.json" \
  --weights "$V5" --predictions "$WORK/heldout-v5.csv"
"$PY" scripts/label_ordering.py "$WORK/sim_val-ref" --predictions "$WORK/heldout-v5.csv" --by-patient
# The two other simulators, 23 held-out slices (named by their place in WORK/heldout.npz), v4 and v5 side by side.
[ "${OTHER_SIMULATORS:-1}" = 0 ] || "$PY" scripts/ordering_check.py --slices scripts/default_weights/heldout_23_slices.json --sources "$WORK" \
  --weights "$V4" --weights "$V5" --cache "$WORK/ordering_cache" --out "$WORK/ordering_check_v5_23slices.json"
echo "copy $V5 to weights/ to ship it"
