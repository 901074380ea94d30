#!/usr/bin/env bash
# make demo: import RAVDESS, split it by speaker, train the default model, evaluate it, predict.
# About ten minutes on a 2-core CPU. Environment: SERKIT_DATA (folder holding ravdess/, or a
# RAVDESS folder itself), DEMO_EPOCHS (default 12), DEMO_OUT (default runs/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
SERKIT=${SERKIT:-.venv/bin/serkit}
DATA=${SERKIT_DATA:-../shared/data}
EPOCHS=${DEMO_EPOCHS:-12}

if [ -d "$DATA/ravdess" ]; then RAVDESS="$DATA/ravdess"; else RAVDESS="$DATA"; fi
if ! ls "$RAVDESS" >/dev/null 2>&1 || [ -z "$(find "$RAVDESS" -maxdepth 3 -name '03-01-*-*-*-*-*.*' -print -quit 2>/dev/null)" ]; then
  cat >&2 <<MSG
error: no RAVDESS speech files found under $RAVDESS.
  The demo needs RAVDESS (audio-only speech, 1440 files, CC BY-NC-SA 4.0):
  1. download Audio_Speech_Actors_01-24.zip from https://zenodo.org/record/1188976
  2. unzip it, e.g. to ~/data/ravdess (it holds Actor_01 ... Actor_24)
  3. run: SERKIT_DATA=~/data/ravdess make demo
  (or import it yourself: serkit data import ravdess ~/data/ravdess -o DIR)
MSG
  exit 1
fi

RUN=${DEMO_OUT:-runs/demo}/$(date +%Y%m%d-%H%M%S)
echo "== serkit demo: RAVDESS from $RAVDESS -> $RUN"
echo "== 1/5 import (16 kHz mono files are referenced in place, others converted to FLAC)"
$SERKIT data import ravdess "$RAVDESS" -o "$RUN/data" --link
echo "== 2/5 speaker-independent split: 10 train / 8 val / 6 test actors, gender-balanced"
$SERKIT data split "$RUN/data/manifest.csv" -o "$RUN/data/split.json" --val 8 --test 6 --seed 0
echo "== 3/5 train CNN-6 on log-Mel for $EPOCHS epochs (the full recipe: configs/ravdess_cnn6.yaml)"
$SERKIT train configs/ravdess_cnn6.yaml --set data.split="$RUN/data/split.json" \
  --set output_dir="$RUN/ravdess-cnn6" --set train.max_epochs="$EPOCHS"
echo "== 4/5 evaluate the saved model on the test actors"
$SERKIT evaluate "$RUN/ravdess-cnn6/model" --split "$RUN/data/split.json" --part test -o "$RUN/evaluation-test"
echo "== 5/5 predict two test utterances"
FILES=$(awk -F, 'NR>1 && $2=="01" && ($4=="anger" || $4=="sadness") {print $1}' "$RUN/data/manifest.csv" | sed -n '1p;$p')
$SERKIT predict "$RUN/ravdess-cnn6/model" $FILES

echo
echo "== done. What the demo produced:"
echo "   $RUN/data/manifest.csv            the imported corpus (1440 utterances, 24 actors)"
echo "   $RUN/data/split.json              the speaker-independent split"
echo "   $RUN/ravdess-cnn6/model/          the trained model (model.safetensors + config.json)"
echo "   $RUN/ravdess-cnn6/metrics.json    val/test UAR, accuracy, macro-F1, confusion; training time and memory"
echo "   $RUN/ravdess-cnn6/report.md       a short report with the confusion matrix and training curve"
echo "   $RUN/evaluation-test/             serkit evaluate's output for the test actors"
