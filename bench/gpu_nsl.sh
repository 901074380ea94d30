#!/usr/bin/env bash
# NSL vs base on the GPU (bench/RESULTS.md, "NSL"): CNN-6 on EmoDB with the neighbour loss over a graph
# built by the RAVDESS Whisper model (seed 0 of bench/train_benchmark.py), 3 seeds, paper recipe
# (configs/emodb_cnn6_nsl.yaml: 50 epochs, Adam 1e-3 x0.9 / 5 epochs, alpha 0.1, 6 neighbours).
# Expects .devgpu/ (ignored) beside the repo: whl/, data/emodb, and nsl/ made here with
#   serkit data import emodb /work/main/.devgpu/data/emodb -o .devgpu/nsl/data --link
#   serkit data split .devgpu/nsl/data/manifest.csv -o .devgpu/nsl/split.json --val 2 --test 2 --seed 0
#   serkit embed <ravdess whisper model> .devgpu/nsl/data/manifest.csv --split .devgpu/nsl/split.json --part train --layer fc1 -o .devgpu/nsl/emb_fc1.npy
#   serkit graph .devgpu/nsl/emb_fc1.npy --threshold T --max-neighbours 6 -o .devgpu/nsl/graph_fc1_T.npz
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .devgpu/whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
# the manifest names the audio under /work/main/.devgpu (where it was made)
mkdir -p /work/main && { [ -e /work/main/.devgpu ] || ln -s "$PWD/.devgpu" /work/main/.devgpu; }
for threshold in ${THRESHOLDS:-0.97 0.99}; do
  for seed in 0 1 2; do
    start=$(date +%s)
    timeout ${RUN_TIMEOUT:-120} python3 -m serkit transfer configs/emodb_cnn6_nsl.yaml --baseline base \
      --set data.split=$PWD/.devgpu/nsl/split.json --set graph.file=$PWD/.devgpu/nsl/graph_fc1_$threshold.npz \
      --set seed=$seed --set output_dir=/tmp/nsl/t$threshold-seed$seed --set train.accelerator=gpu \
      --set train.devices=1 --set train.progress_bar=false 2>&1 | grep -v "^epoch" >> "$OUT/nsl.log"
    cp /tmp/nsl/t$threshold-seed$seed/comparison.md "$OUT/comparison_t${threshold}_seed$seed.md" 2>/dev/null
    echo "threshold $threshold seed $seed: $(( $(date +%s) - start )) s" | tee -a "$OUT/nsl.log"
  done
done
echo done
