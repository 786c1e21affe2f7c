#!/usr/bin/env bash
# The paper's comparisons on one budget: every row of Tab. 3 (both Swin-T baselines), Tab. 7
# (BAM channel / spatial) and the head partition, trained on the same simulated images, patient
# split and epochs, evaluated on the same held-out patients (PLCC, SROCC, KROCC, Score and the
# ordering measures), and written as a table into docs/ablations.md.
#
#   bash scripts/ablations.sh SIM_DIR [WORK]
#
# SIM_DIR: a `clinreadnet simulate` folder (research/train_default_weights.sh makes one); WORK:
# where the subset and the runs go (default work/ablations, ignored by git). Resumable: a row
# with an eval.json is skipped, an interrupted row continues from its last epoch.
# Budget: IMAGES (default 1600) images, EPOCHS (default 2) epochs of 224² at batch 8, bf16; each
# row should cost about EPOCHS x IMAGES / 8 s on a 2-core CPU with AVX512-BF16 (8 rows).
# Each row's output goes to WORK/runs/ROW.log; PARALLEL rows run at once.
set -euo pipefail
cd "$(dirname "$0")/.."
SIM=${1:?usage: bash scripts/ablations.sh SIM_DIR [WORK]}
WORK=${2:-work/ablations}
EPOCHS=${EPOCHS:-2}
IMAGES=${IMAGES:-1600}
CLI=${CLINREADNET:-.venv/bin/clinreadnet}
PY=${PYTHON:-.venv/bin/python}
PARALLEL=${PARALLEL:-1}          # rows trained at once (a GPU takes several)
SUBSET_FLAGS=${SUBSET_FLAGS:-}   # --model-input: a small 224² 8-bit subset, e.g. to carry to a GPU machine
CARD=${CARD:-docs/ablations.md}
OPTIONS_EXTRA=${OPTIONS_EXTRA:-}  # more lines for every row's options file (e.g. a tiny model to test this script)

[ -f "$WORK/data/manifest.csv" ] || "$PY" scripts/ablation_table.py subset "$SIM" "$WORK/data" --images "$IMAGES" $SUBSET_FLAGS

run_row() {
  local row=$1 name=${1%%:*}
  local run="$WORK/runs/${row/:/-}" options="$WORK/options-${row/:/-}.toml"
  [ -f "$run/eval.json" ] && return 0
  {
    echo "model = \"$name\""
    echo "epochs = $EPOCHS"
    echo "restart_epochs = $EPOCHS"
    echo "amp = true"
    echo "input_range = \"unit\""  # the subset's images: the sim's [0, 1] floats, or 8-bit model input
    [ -z "$OPTIONS_EXTRA" ] || printf '%b\n' "$OPTIONS_EXTRA"
    if [ "$row" != "$name" ]; then
      printf '[model_overrides.loss]\nhead_partition = "%s"\n' "${row#*:}"
    fi
  } > "$options"
  if [ -f "$run/last_state.safetensors" ]; then
    "$CLI" train --resume --out "$run" --config "$options"
  else
    "$CLI" train --data "$WORK/data" --out "$run" --config "$options" --overwrite
  fi
  "$CLI" evaluate --run "$run" --split val --format json --predictions "$run/predictions.csv" > "$run/eval.json.tmp" \
    && mv "$run/eval.json.tmp" "$run/eval.json"
}

rows=(swin_t-plain swin_t swin_t+soqn swin_t+soqn+mtmsa clinreadnet bam-channel bam-spatial clinreadnet:shuffled)
mkdir -p "$WORK/runs"
failed=0
for row in "${rows[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n || failed=1; done
  run_row "$row" > "$WORK/runs/${row/:/-}.log" 2>&1 &
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || failed=1; done
[ "$failed" = 0 ] || echo "some rows failed: see $WORK/runs/*.log" >&2
"$PY" scripts/ablation_table.py table "$WORK/runs" --card "$CARD"
exit "$failed"
