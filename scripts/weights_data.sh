#!/usr/bin/env bash
# The simulated data behind weights v4 and v5 (docs/model-card.md), built in WORK from the real CT
# sources; finished steps are skipped when re-run. Sourced by train_weights_v4.sh (and research/train_weights_v5.sh).
#
#   bash scripts/weights_data.sh [SOURCES] [WORK]
#
# WORK/sim_val (+ sim_val-ref, val-all.json): every slice of the 11 held-out patients, reference-unit
# labels; WORK/sim_t46: two evenly spaced slices of each of the 29 other patients; WORK/mix25: the
# training mix (untouched images twelve times, Hann at half Nyquist twice), validated on 192 held-out
# images. About 16 min of simulation on a 2-core CPU. MIX=mix-all builds WORK/sim_all and WORK/mix-all
# in place of sim_t46 and mix25 (the forty-third attempt).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SOURCES=${1:-../shared/data/ct_sources}
WORK=${2:-work}
CLI=${CLINREADNET:-.venv/bin/clinreadnet}
PY=${PYTHON:-.venv/bin/python}
HELDOUT=scripts/default_weights/heldout_patients.json  # names the 11 held-out patients
MIX=${MIX:-mix25}  # or mix-all: the forty-third attempt's training mix (end of this file)
mkdir -p "$WORK"

# Held out: every slice of the 11 patients; training: two evenly spaced slices of each other patient.
[ -f "$WORK/heldout.npz" ] || "$PY" scripts/select_sources.py "$WORK/heldout.npz" --sources "$SOURCES" --patients-from "$HELDOUT"
[ "$MIX" != mix25 ] || [ -f "$WORK/train2.npz" ] || "$PY" scripts/select_sources.py "$WORK/train2.npz" --sources "$SOURCES" --patients-from "$HELDOUT" \
  --exclude --per-patient 2
[ -f "$WORK/sim_val/train.json" ] || "$CLI" simulate --source "$WORK/heldout.npz" --out "$WORK/sim_val" --overwrite \
  --mode both --full-filters ram-lak,shepp-logan,cosine,hann,hann:0.5 --electronic-noise 5,20 --seed 0
# Full reconstructions at a fixed photon budget, Hann at half Nyquist drawn for a third of the slices.
[ "$MIX" != mix25 ] || [ -f "$WORK/sim_t46/train.json" ] || "$CLI" simulate --source "$WORK/train2.npz" --out "$WORK/sim_t46" --overwrite \
  --mode both --photon-budget 3e5,3e6 --full-filters hann:0.5,hann:0.5,ram-lak,shepp-logan,cosine,hann \
  --electronic-noise 5,20 --seed 5

# Reference-unit labels: degradation in units of the quantum noise of each image's own full-dose reference.
# MIX=mix-all: every slice of the 29 training patients (166) instead of two each, 12 images a slice
# (doses 1, 0.25, 0.1; full and 360 views) so that the teacher's pass costs about what MIX25's does
# (about 20 min of simulation); its untouched images four times, Hann at half Nyquist twice.
[ "$MIX" != mix-all ] || [ -f "$WORK/train_all.npz" ] || "$PY" scripts/select_sources.py "$WORK/train_all.npz" \
  --sources "$SOURCES" --patients-from "$HELDOUT" --exclude
[ "$MIX" != mix-all ] || [ -f "$WORK/sim_all/train.json" ] || "$CLI" simulate --source "$WORK/train_all.npz" \
  --out "$WORK/sim_all" --overwrite --mode both --doses 1,0.25,0.1 --views full,360 --photon-budget 3e5,3e6 \
  --full-filters hann:0.5,hann:0.5,ram-lak,shepp-logan,cosine,hann --electronic-noise 5,20 --seed 7

for sim in sim_val sim_t46 sim_all; do
  [ -d "$WORK/$sim" ] || continue
  [ -f "$WORK/$sim/train-ref.json" ] || "$PY" scripts/label_ordering.py "$WORK/$sim" --unit reference \
    --write "$WORK/$sim/train-ref.json"
done
if [ ! -f "$WORK/sim_val-ref/train.json" ]; then  # the held-out images under those labels, for evaluate
  mkdir -p "$WORK/sim_val-ref"
  ln -sfn "$(cd "$WORK/sim_val" && pwd)/image" "$WORK/sim_val-ref/image"
  cp "$WORK/sim_val/manifest.csv" "$WORK/sim_val-ref/manifest.csv"
  cp "$WORK/sim_val/train-ref.json" "$WORK/sim_val-ref/train.json"
fi

# Untouched training images twelve times, every Hann-at-half-Nyquist reconstruction a second time;
# validation (it only picks the epoch) on 192 held-out images drawn at random.
[ "$MIX" != mix25 ] || [ -f "$WORK/mix25/split.json" ] || "$PY" scripts/mix_datasets.py "$WORK/mix25" \
  --heldout "$WORK/sim_val" --train "$WORK/sim_t46:12:1.0" --again-filter hann:0.5 --labels train-ref.json --val-count 192
[ -f "$WORK/val-all.json" ] || "$PY" -c "import json, sys; l = json.load(open(sys.argv[1])); json.dump({'train': [], 'val': sorted(l)}, open(sys.argv[2], 'w'))" \
  "$WORK/sim_val-ref/train.json" "$WORK/val-all.json"
[ "$MIX" != mix-all ] || [ -f "$WORK/mix-all/split.json" ] || "$PY" scripts/mix_datasets.py "$WORK/mix-all" \
  --heldout "$WORK/sim_val" --train "$WORK/sim_all:4:1.0" --again-filter hann:0.5 --labels train-ref.json --val-count 192
