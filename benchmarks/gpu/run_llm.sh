#!/usr/bin/env bash
# On the GPU machine (after the set-up in benchmarks/gpu/README.md): the Llama-3-8B-shaped
# benchmark. Results go to ${OUT:-benchmarks/results}.
set -uo pipefail
OUT=${OUT:-benchmarks/results}
LABEL=${LABEL:-h100}
CONC=${CONC:-1,8,32,64}
uip() { python -c "from uip.cli import main; main()" "$@"; }
export UIP_ARTIFACTS=/tmp/art
python benchmarks/gpu/prepare_llm.py /tmp/art /tmp/llm-specs 2>&1 | tail -2 | tee "$OUT/llm-$LABEL.prepare.txt"
timeout 120 python benchmarks/gpu/generate_baseline.py /tmp/art/llm-8b 128 2>/dev/null | tail -1 \
  | tee "$OUT/llm-$LABEL.generate.json"
uip repo build --specs /tmp/llm-specs --out /tmp/llm-repo
timeout "${BENCH_TIMEOUT:-420}" python -c "from uip.cli import main; main()" bench "${MODEL:-llm_bls}" --model-repository /tmp/llm-repo \
  --device cuda --ref-model-dir /tmp/art/llm-8b --ref-num-blocks 2048 --ref-max-batch-tokens 8192 \
  --concurrency "$CONC" --label "$LABEL" --measurement-ms "${WINDOW_MS:-6000}" --out "$OUT" 2>&1 \
  | grep -E "^\||wrote|uip:|Error|rror:" | tee "$OUT/${MODEL:-llm_bls}-$LABEL.bench.txt"
