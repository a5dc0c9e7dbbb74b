#!/usr/bin/env bash
# On the GPU machine (after the set-up in benchmarks/gpu/README.md): the Llama-3-8B-shaped
# benchmark through Triton. Results go to ${OUT:-benchmarks/results}. STAGE=prepare writes the
# model (seeded random bf16 weights; TOKENIZER: a tokenizer folder, e.g. the 128k one from
# benchmarks/gpu/build_tokenizer.py, else llm-tiny's) and renders the repository; STAGE=bench
# runs `uip bench` (perf_analyzer through Triton, then the same engine in-process with
# llm_engine's spec parameters) on what prepare left in /tmp; STAGE=baseline times plain
# transformers `generate`; STAGE=all (default) = prepare + bench. COLOCATED=1: llm_bls holds the
# engine itself (engine_transport: local; prepare_llm.py --colocated), no llm_engine model.
set -uo pipefail
OUT=${OUT:-benchmarks/results}
LABEL=${LABEL:-h200}
CONC=${CONC:-1,8,64}
STAGE=${STAGE:-all}
MODEL=${MODEL:-llm_bls}
PROMPT_TOKENS=${PROMPT_TOKENS:-128}
export UIP_ARTIFACTS=/tmp/art
mkdir -p "$OUT"
uip() { python -c "from uip.cli import main; main()" "$@"; }
if [ "$STAGE" = all ] || [ "$STAGE" = prepare ]; then
  python benchmarks/gpu/prepare_llm.py /tmp/art /tmp/llm-specs --num-blocks "${NUM_BLOCKS:-1024}" \
    --max-batch-tokens "${MAX_BATCH_TOKENS:-256}" ${COLOCATED:+--colocated} \
    ${TOKENIZER:+--tokenizer "$TOKENIZER"} 2>&1 | tail -2 | tee "$OUT/llm-$LABEL.prepare.txt"
  uip repo build --specs /tmp/llm-specs --out /tmp/llm-repo
fi
if [ "$STAGE" = baseline ]; then
  timeout 150 python benchmarks/gpu/generate_baseline.py /tmp/art/llm-8b 128 2>/dev/null \
    | tail -1 | tee "$OUT/llm-$LABEL.generate.json"
fi
if [ "$STAGE" = all ] || [ "$STAGE" = bench ]; then
  timeout "${BENCH_TIMEOUT:-420}" bash -c "$(declare -f uip); uip bench $MODEL \
    --model-repository /tmp/llm-repo --device cuda --concurrency $CONC \
    --prompt-tokens $PROMPT_TOKENS --distinct-prompts 64 --label $LABEL \
    --measurement-ms ${WINDOW_MS:-6000} --out $OUT" 2>&1 \
    | grep -E "^\||wrote|calibration|uip:|Error|rror:|perf_analyzer:" | tee "$OUT/$MODEL-$LABEL.bench.txt"
fi
