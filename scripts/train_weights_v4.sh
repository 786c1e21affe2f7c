#!/usr/bin/env bash
# Rebuild weights/clinreadnet-sim-v4.safetensors from weights v3 and the real CT sources: v3 fine-tuned
# for two epochs on reference-unit labels, then v3 and that fine-tune averaged half and half
# (docs/model-card.md). v3 is taken from the git history (commit 4a31dea). Finished steps are skipped when
# the script is re-run.
#
#   bash scripts/train_weights_v4.sh [SOURCES] [WORK]
#
# SOURCES: normal-dose CT (default ../shared/data/ct_sources); WORK: simulated data and runs
# (default work/, ignored by git). Wall time on a 2-core CPU with AVX512-BF16: simulations ~16 min,
# training ~11 min, held-out evaluation ~10 min, other-simulator check ~15 min. bf16 training is
# not bit-reproducible, so a rebuild gives nearby weights, not the same file.
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCES=${1:-../shared/data/ct_sources}
WORK=${2:-work}
CLI=${CLINREADNET:-.venv/bin/clinreadnet}
PY=${PYTHON:-.venv/bin/python}
HELDOUT=scripts/default_weights/heldout_patients.json  # names the 11 held-out patients
bash scripts/weights_data.sh "$SOURCES" "$WORK"  # held-out and training simulations, labels, MIX25
V3="$WORK/clinreadnet-sim-v3.safetensors"  # the start, no longer in weights/
if [ ! -f "$V3" ]; then
  git show 4a31dea:weights/clinreadnet-sim-v3.safetensors > "$V3.partial" && mv "$V3.partial" "$V3"
fi

# The fine-tune (the twenty-fifth attempt): two epochs from v3, ranking term, bf16 where the CPU
# has it; an interrupted run resumes.
RUN="$WORK/runs/a25"
if [ ! -f "$RUN/metrics.jsonl" ] || [ "$(wc -l < "$RUN/metrics.jsonl")" -lt 2 ]; then
  resume=(); [ -f "$RUN/last_state.safetensors" ] && resume=(--resume)
  "$CLI" train --config scripts/default_weights/attempt19.toml --data "$WORK/mix25" \
    --split-file "$WORK/mix25/split.json" --init-weights "$V3" \
    --out "$RUN" "${resume[@]}"
fi

# v4: v3 and the fine-tune averaged half and half, read through all four sampling grids, fp16.
"$PY" scripts/export_weights.py "$V3" "$WORK/clinreadnet-sim-v4.safetensors" \
  --average-with "$RUN/best.safetensors" --shares 0.5 0.5

# Held-out patients (reference-unit labels) and the two other simulators.
"$CLI" evaluate --data "$WORK/sim_val-ref" --split val --split-file "$WORK/val-all.json" \
  --weights "$WORK/clinreadnet-sim-v4.safetensors" --predictions "$WORK/heldout-v4.csv"
"$PY" scripts/label_ordering.py "$WORK/sim_val-ref" --predictions "$WORK/heldout-v4.csv" --by-patient
"$PY" scripts/ordering_check.py --slices "$HELDOUT" --sources "$SOURCES" --weights "$WORK/clinreadnet-sim-v4.safetensors" \
  --out "$WORK/ordering_check_v4.json"
echo "copy $WORK/clinreadnet-sim-v4.safetensors to weights/ to ship it"
