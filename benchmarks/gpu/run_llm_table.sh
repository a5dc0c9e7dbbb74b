#!/usr/bin/env bash
# One device call (~7.5 minutes): issue 10's table on one machine. The 8B-shaped model prepared
# (128k tokenizer), `uip bench llm_bls` at CONC (default 1,8,64: perf_analyzer through Triton
# beside the in-process engine; perf_analyzer's own reports kept as *.perf.c<N>.log), then the
# anchor (../shared/anchors/llm_anchor.py, copied to .anchors/: static cache + torch.compile,
# and the device-to-device copy rate that sets the HBM limit) at ANCHOR_BATCHES until the call's
# end. Carry .devcarry, .whl, .gpuwork and .anchors (benchmarks/gpu/README.md).
#   OUT=$OUT bash benchmarks/gpu/run_llm_table.sh
set -uo pipefail
S=$(date +%s)
OUT=${OUT:-benchmarks/results}
LABEL=${LABEL:-h200}
mkdir -p "$OUT"
source benchmarks/gpu/device_env.sh
[ -f .gpuwork/tok128k.tar.xz ] && tar -C /tmp -xJf .gpuwork/tok128k.tar.xz
TOKENIZER=/tmp/tok128k STAGE=prepare OUT=$OUT LABEL=$LABEL bash benchmarks/gpu/run_llm.sh \
  2>&1 | tail -1
echo "prepared at +$(( $(date +%s) - S )) s"
STAGE=bench CONC=${CONC:-1,8,64} BENCH_TIMEOUT=${BENCH_TIMEOUT:-300} OUT=$OUT LABEL=$LABEL \
  bash benchmarks/gpu/run_llm.sh
echo "bench done at +$(( $(date +%s) - S )) s"
if [ -f .anchors/llm_anchor.py ]; then
  timeout $(( S + ${END_S:-570} - $(date +%s) )) python .anchors/llm_anchor.py /tmp/art/llm-8b \
    --batches "${ANCHOR_BATCHES:-1,64}" --deadline $(( S + ${ANCHOR_DEADLINE_S:-440} )) \
    --per-batch-s 40 --json "$OUT/llm-anchor-$LABEL.json" 2>&1 | tail -5
fi
echo "end at +$(( $(date +%s) - S )) s"
