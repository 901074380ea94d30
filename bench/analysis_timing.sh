#!/usr/bin/env bash
# Benchmark: wall-clock time of each representation analysis (issue #8) on RAVDESS, on this CPU.
# Two fine-tuned Whisper tiny.en models of bench/train_benchmark.py (different seeds, same split):
#   bash bench/analysis_timing.sh runs/bench/<ravdess run>/seed0/model runs/bench/<ravdess run>/seed1/model SPLIT.json
# Each step is one serkit command; prints "step: seconds" lines (GNU time also gives peak memory).
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1; B=$2; SPLIT=$3
SERKIT=${SERKIT:-.venv/bin/serkit}
MANIFEST=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['manifest'])" "$SPLIT")
case "$MANIFEST" in /*) ;; *) MANIFEST="$(dirname "$SPLIT")/$MANIFEST";; esac
OUT=${OUT:-runs/bench/analysis-timing-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
step() {
  local name=$1; shift
  local start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$OUT/$name.mem" "$@" > "$OUT/$name.log" 2>&1
  local end=$(date +%s.%N)
  printf "%-40s %7.1f s   peak RSS %6.0f MB\n" "$name" "$(echo "$end - $start" | bc)" "$(echo "$(cat "$OUT/$name.mem") / 1024" | bc)"
}
echo "RAVDESS: $MANIFEST ($(($(wc -l < "$MANIFEST") - 1)) utterances); split $SPLIT"
step "probe A, 5 hidden layers (train+test)" $SERKIT probe "$A" --split "$SPLIT" -o "$OUT/probe"
step "compare A B (test part)" $SERKIT compare "$A" "$B" "$MANIFEST" --split "$SPLIT" --part test -o "$OUT/compare"
step "attention A B (50 test utterances)" $SERKIT attention "$A" "$B" "$MANIFEST" --split "$SPLIT" --part test --max-utterances 50 -o "$OUT/attention"
step "features opensmile eGeMAPSv02 (all)" $SERKIT features opensmile "$MANIFEST" --set eGeMAPSv02 -o "$OUT/egemaps.npy"
step "probe eGeMAPSv02 (train -> test)" $SERKIT probe "$OUT/egemaps.npy" --split "$SPLIT" -o "$OUT/probe-egemaps"
step "features boaw ComParE LLDs, 500 words" $SERKIT features boaw "$SPLIT" --set ComParE_2016 --words 500 -o "$OUT/boaw.npy"
step "probe BoAW (train -> test)" $SERKIT probe "$OUT/boaw.npy" --split "$SPLIT" -o "$OUT/probe-boaw"
for f in probe probe-egemaps probe-boaw; do echo "== $f"; grep "^|" "$OUT/$f/probe.md"; done
echo "== compare"; cat "$OUT/compare/compare.md" | head -20
echo "outputs in $OUT"
