#!/usr/bin/env bash
# The forty-third attempt's training mix: every slice of the 29 training patients (166) instead of
# two each, with fewer doses and view counts per slice so that the teacher's pass costs about what
# MIX25's does. Distillation needs no labels, so more distinct slices cost only simulation time.
#
#   bash research/v5_more_slices_data.sh [SOURCES] [WORK]
#
# WORK/sim_all: 166 slices x 12 images (doses 1, 0.25, 0.1; full and 360 views; add-difference and
# full reconstructions at a fixed photon budget), about 13 min on a 2-core CPU; WORK/mix-all: its
# untouched images four times, Hann at half Nyquist twice, validated on 192 held-out images as
# MIX25 is. Needs WORK/sim_val from scripts/weights_data.sh (the held-out patients). Finished
# steps are skipped when re-run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SOURCES=${1:-../shared/data/ct_sources}
WORK=${2:-work}
CLI=${CLINREADNET:-.venv/bin/clinreadnet}
PY=${PYTHON:-.venv/bin/python}
HELDOUT=scripts/default_weights/heldout_patients.json

[ -f "$WORK/train_all.npz" ] || "$PY" scripts/select_sources.py "$WORK/train_all.npz" --sources "$SOURCES" \
  --patients-from "$HELDOUT" --exclude
[ -f "$WORK/sim_all/train.json" ] || "$CLI" simulate --source "$WORK/train_all.npz" --out "$WORK/sim_all" --overwrite \
  --mode both --doses 1,0.25,0.1 --views full,360 --photon-budget 3e5,3e6 \
  --full-filters hann:0.5,hann:0.5,ram-lak,shepp-logan,cosine,hann --electronic-noise 5,20 --seed 7
[ -f "$WORK/sim_all/train-ref.json" ] || "$PY" scripts/label_ordering.py "$WORK/sim_all" --unit reference \
  --write "$WORK/sim_all/train-ref.json"
[ -f "$WORK/mix-all/split.json" ] || "$PY" scripts/mix_datasets.py "$WORK/mix-all" --heldout "$WORK/sim_val" \
  --train "$WORK/sim_all:4:1.0" --again-filter hann:0.5 --labels train-ref.json --val-count 192
