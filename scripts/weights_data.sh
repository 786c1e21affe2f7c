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
MIX=${MIX:-mix25}  # the training mix: mix25, or mix-all (the forty-third attempt)
case "$MIX" in  # its simulation, and how many times its untouched images enter it
  mix25) TRAIN_SIM=sim_t46 UNTOUCHED_REPEAT=12 ;;
  mix-all) TRAIN_SIM=sim_all UNTOUCHED_REPEAT=4 ;;
  *) echo "MIX is mix25 or mix-all, not $MIX" >&2; exit 2 ;;
esac
mkdir -p "$WORK"

# Held out: every slice of the 11 patients.
[ -f "$WORK/heldout.npz" ] || "$PY" scripts/select_sources.py "$WORK/heldout.npz" --sources "$SOURCES" --patients-from "$HELDOUT"
[ -f "$WORK/sim_val/train.json" ] || "$CLI" simulate --source "$WORK/heldout.npz" --out "$WORK/sim_val" --overwrite \
  --mode both --full-filters ram-lak,shepp-logan,cosine,hann,hann:0.5 --electronic-noise 5,20 --seed 0

# Training: full reconstructions at a fixed photon budget, Hann at half Nyquist drawn for a third of the slices.
if [ "$MIX" = mix25 ]; then  # two evenly spaced slices of each other patient, 32 images a slice
  [ -f "$WORK/train2.npz" ] || "$PY" scripts/select_sources.py "$WORK/train2.npz" --sources "$SOURCES" \
    --patients-from "$HELDOUT" --exclude --per-patient 2
  [ -f "$WORK/sim_t46/train.json" ] || "$CLI" simulate --source "$WORK/train2.npz" --out "$WORK/sim_t46" --overwrite \
    --mode both --photon-budget 3e5,3e6 --full-filters hann:0.5,hann:0.5,ram-lak,shepp-logan,cosine,hann \
    --electronic-noise 5,20 --seed 5
else  # every slice of the 29 other patients (166), 12 images a slice (doses 1, 0.25, 0.1; full and 360
  # views) so that the teacher's pass costs about what MIX25's does (about 20 min of simulation)
  [ -f "$WORK/train_all.npz" ] || "$PY" scripts/select_sources.py "$WORK/train_all.npz" --sources "$SOURCES" \
    --patients-from "$HELDOUT" --exclude
  [ -f "$WORK/sim_all/train.json" ] || "$CLI" simulate --source "$WORK/train_all.npz" --out "$WORK/sim_all" --overwrite \
    --mode both --doses 1,0.25,0.1 --views full,360 --photon-budget 3e5,3e6 \
    --full-filters hann:0.5,hann:0.5,ram-lak,shepp-logan,cosine,hann --electronic-noise 5,20 --seed 7
fi

# Reference-unit labels: degradation in units of the quantum noise of each image's own full-dose reference.
for sim in sim_val "$TRAIN_SIM"; do
  [ -f "$WORK/$sim/train-ref.json" ] || "$PY" scripts/label_ordering.py "$WORK/$sim" --unit reference \
    --write "$WORK/$sim/train-ref.json"
done
if [ ! -f "$WORK/sim_val-ref/train.json" ]; then  # the held-out images under those labels, for evaluate
  mkdir -p "$WORK/sim_val-ref"
  ln -sfn "$(cd "$WORK/sim_val" && pwd)/image" "$WORK/sim_val-ref/image"
  cp "$WORK/sim_val/manifest.csv" "$WORK/sim_val-ref/manifest.csv"
  cp "$WORK/sim_val/train-ref.json" "$WORK/sim_val-ref/train.json"
fi
[ -f "$WORK/val-all.json" ] || "$PY" -c "import json, sys; l = json.load(open(sys.argv[1])); json.dump({'train': [], 'val': sorted(l)}, open(sys.argv[2], 'w'))" \
  "$WORK/sim_val-ref/train.json" "$WORK/val-all.json"

# The mix: every Hann-at-half-Nyquist reconstruction a second time; validation (it only picks the
# epoch) on 192 held-out images drawn at random.
[ -f "$WORK/$MIX/split.json" ] || "$PY" scripts/mix_datasets.py "$WORK/$MIX" --heldout "$WORK/sim_val" \
  --train "$WORK/$TRAIN_SIM:$UNTOUCHED_REPEAT:1.0" --again-filter hann:0.5 --labels train-ref.json --val-count 192
