#!/usr/bin/env bash
# One GPU session for the SSL paths (bench/RESULTS.md, "GPU"): the backbone checks, the EmoDB
# Whisper recipe trained on the GPU over 3 seeds, and one forget request (adv-ewc) on the GPU.
#
# Expects, beside the repo (ignored, never committed): .devgpu/whl (wheels the GPU image lacks:
# pydantic, soundfile, soxr, ...), .devgpu/cache (serkit's converted Whisper tiny.en, encoder only)
# and .devgpu/data/emodb (the corpus as in ../shared/data). Writes logs under $OUT (or ./gpu_out).
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .devgpu/whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site SERKIT_CACHE=$PWD/.devgpu/cache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

echo "== backbone checks"
timeout 150 python3 bench/gpu_check.py 2>&1 | tee "$OUT/gpu_check.log"

echo "== EmoDB Whisper recipe on the GPU, 3 seeds"
start=$(date +%s)
timeout 250 python3 bench/train_benchmark.py --corpus emodb --model whisper --seeds 0 1 2 --data .devgpu/data \
  --out /tmp/runs --set train.accelerator=gpu --set train.devices=1 2>&1 | grep -v "^Epoch" | tee "$OUT/train_emodb_whisper_gpu.log"
echo "train wall: $(( $(date +%s) - start )) s" | tee -a "$OUT/train_emodb_whisper_gpu.log"
run=$(ls -d /tmp/runs/emodb-whisper-* | tail -1)
python3 - "$run" <<'EOF' | tee -a "$OUT/train_emodb_whisper_gpu.log"
import json, sys, pathlib
for m in sorted(pathlib.Path(sys.argv[1]).glob("seed*/metrics.json")):
    t = json.loads(m.read_text())["training"]
    print(m.parent.name, "peak_gpu_mb", t.get("peak_gpu_mb"), "train_s", t.get("train_seconds"))
EOF

echo "== forget 10 utterances of EmoDB training speaker 10 on the GPU (adv-ewc)"
timeout 140 python3 -m serkit forget "$run/seed0/model" --speaker 10 --n 10 --seed 0 -o /tmp/forget-gpu 2>&1 | tee "$OUT/forget_gpu.log"
cp /tmp/forget-gpu/receipt.json "$OUT/forget_gpu_receipt.json" 2>/dev/null
echo done
