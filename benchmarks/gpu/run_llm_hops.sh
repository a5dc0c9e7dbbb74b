#!/usr/bin/env bash
# One device call: prepare the 8B-shaped model, then llm_hops.py's VARIANTS at CONC streams
# (same machine, one server each), and hop_trace.py's table for every trace variant. Carry
# .devcarry, .whl (with psutil) and .gpuwork/tok128k.tar.xz (benchmarks/gpu/README.md).
#   OUT=$OUT VARIANTS=trace,trace-bls4 CONC=64 BUDGET_S=400 bash benchmarks/gpu/run_llm_hops.sh
set -uo pipefail
T0=$(date +%s); END=$((T0 + ${BUDGET_S:-400}))
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
source benchmarks/gpu/device_env.sh
[ -f .gpuwork/tok128k.tar.xz ] && tar -C /tmp -xJf .gpuwork/tok128k.tar.xz
TOKENIZER=/tmp/tok128k STAGE=prepare OUT=$OUT bash benchmarks/gpu/run_llm.sh 2>&1 | tail -1
echo "prepared at +$(( $(date +%s) - T0 )) s"
cd benchmarks/gpu
rm -rf /tmp/hoptrace /tmp/hoptrace-*
python llm_hops.py /tmp/llm-repo --variants "${VARIANTS:-trace,trace-bls4}" \
  --concurrency "${CONC:-64}" --json "$OUT/llm-hops-${LABEL:-h200}.json" --deadline "$END" 2>&1 \
  | grep -E "^\||deadline|rror" | tee "$OUT/llm-hops-${LABEL:-h200}.txt"
for d in /tmp/hoptrace /tmp/hoptrace-*; do
  [ -d "$d" ] && python hop_trace.py "$d" | tee -a "$OUT/llm-hops-${LABEL:-h200}.txt"
done
echo "done at +$(( $(date +%s) - T0 )) s"
