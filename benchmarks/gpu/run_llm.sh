#!/usr/bin/env bash
# On the GPU machine (after the set-up in benchmarks/gpu/README.md): the Llama-3-8B-shaped
# benchmark. Results go to ${OUT:-benchmarks/results}. STAGE=prepare writes the model and runs
# the plain `generate` baseline; STAGE=bench runs `uip bench` (Triton vs in-process) on what
# prepare left in /tmp; STAGE=all (default) does both (may not fit one 10-minute device call).
set -uo pipefail
OUT=${OUT:-benchmarks/results}
LABEL=${LABEL:-h100}
CONC=${CONC:-1,8,32,64}
STAGE=${STAGE:-all}
MODEL=${MODEL:-llm_bls}
export UIP_ARTIFACTS=/tmp/art
mkdir -p "$OUT"
if [ "$STAGE" != bench ]; then
  python benchmarks/gpu/prepare_llm.py /tmp/art /tmp/llm-specs 2>&1 | tail -2 \
    | tee "$OUT/llm-$LABEL.prepare.txt"
  timeout 150 python benchmarks/gpu/generate_baseline.py /tmp/art/llm-8b 128 2>/dev/null \
    | tail -1 | tee "$OUT/llm-$LABEL.generate.json"
  python -c "from uip.cli import main; main()" repo build --specs /tmp/llm-specs --out /tmp/llm-repo
fi
if [ "$STAGE" != prepare ]; then
  timeout "${BENCH_TIMEOUT:-420}" python -c "from uip.cli import main; main()" bench "$MODEL" \
    --model-repository /tmp/llm-repo --device cuda --ref-model-dir /tmp/art/llm-8b \
    --ref-num-blocks 2048 --ref-max-batch-tokens 8192 --concurrency "$CONC" --label "$LABEL" \
    --measurement-ms "${WINDOW_MS:-6000}" --out "$OUT" 2>&1 \
    | grep -E "^\||wrote|uip:|Error|rror:|perf_analyzer:" | tee "$OUT/$MODEL-$LABEL.bench.txt"
fi
