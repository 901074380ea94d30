#!/usr/bin/env bash
# NegGrad (bounded gradient ascent) against adv-ewc and random labelling on CNN-6 / EmoDB, N = 10, over the
# forget speakers and seeds of configs/unlearning_emodb_cnn6.yaml (train -> val: validation speakers only).
#   bash bench/neg_grad_emodb.sh            (bench/RESULTS.md section 21 has its figures)
set -euo pipefail
SERKIT=${SERKIT:-.venv/bin/serkit}
DATA=${SERKIT_DATA:-../shared/data}
[ -f runs/data/emodb/manifest.csv ] || $SERKIT data import emodb "$DATA/emodb" -o runs/data/emodb --link
[ -f runs/data/emodb/split.json ] || $SERKIT data split runs/data/emodb/manifest.csv -o runs/data/emodb/split.json --val 2 --test 2 --seed 0
[ -d runs/emodb-cnn6/model ] || $SERKIT train configs/emodb_cnn6.yaml --set seed=1 --set output_dir=runs/emodb-cnn6
$SERKIT experiment unlearning configs/unlearning_emodb_cnn6.yaml --set "n=[10]" \
  --set output_dir=runs/experiments/neg-grad-emodb-cnn6 \
  --set "methods={random-label: {target: retrain-like, lr: 1.0e-4}, adv-ewc: {pgd_steps: 20, adversarial_per_sample: 10, target: retrain-like, adversarial_keep: successful, lr: 1.0e-4}, neg-grad: {target: retrain-like, lr: 1.0e-4}, neg-grad-lr1e-5: {method: neg-grad, target: retrain-like, lr: 1.0e-5}}"
cat runs/experiments/neg-grad-emodb-cnn6/table1.md
