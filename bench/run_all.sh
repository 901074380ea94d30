#!/usr/bin/env bash
# Every benchmark of the foundation and Whisper releases, one after another (hours on 2 cores).
# Output: bench/logs/*.log; the figures go into bench/RESULTS.md by hand, with these commands.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p bench/logs bench/figures
$PY bench/layer_probe.py runs/data/ravdess/split.json --png bench/figures/ravdess_whisper_layers.png 2>&1 | tee bench/logs/layer_probe_ravdess.log
$PY bench/train_benchmark.py --corpus ravdess --model whisper 2>&1 | tee bench/logs/ravdess_whisper.log
$PY bench/train_benchmark.py --corpus ravdess --model cnn6 2>&1 | tee bench/logs/ravdess_cnn6.log
$PY bench/train_benchmark.py --corpus emodb --model cnn6 2>&1 | tee bench/logs/emodb_cnn6.log
$PY bench/train_benchmark.py --corpus emodb --model whisper 2>&1 | tee bench/logs/emodb_whisper.log
$PY bench/egemaps_baseline.py runs/data/ravdess/split.json 2>&1 | tee bench/logs/egemaps_ravdess.log
$PY bench/egemaps_baseline.py runs/data/emodb/split.json 2>&1 | tee bench/logs/egemaps_emodb.log
