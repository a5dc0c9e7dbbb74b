#!/usr/bin/env bash
# One device call (~6 minutes): the 8B-shaped model prepared once, then `uip bench llm_bls`
# (perf_analyzer through Triton beside the in-process engine) at CONC streams on two
# repositories of it: llm_engine as a model of its own (engine_transport: grpc, the default)
# and llm_bls holding the engine (engine_transport: local). Carry .devcarry, .whl and
# .gpuwork/tok128k.tar.xz (benchmarks/gpu/README.md).
#   OUT=$OUT CONC=64 bash benchmarks/gpu/run_llm_transport_ab.sh
set -uo pipefail
T0=$(date +%s)
OUT=${OUT:-benchmarks/results}
CONC=${CONC:-64}
mkdir -p "$OUT"
source benchmarks/gpu/device_env.sh
[ -f .gpuwork/tok128k.tar.xz ] && tar -C /tmp -xJf .gpuwork/tok128k.tar.xz
TOKENIZER=/tmp/tok128k STAGE=prepare OUT=$OUT bash benchmarks/gpu/run_llm.sh 2>&1 | tail -1
python benchmarks/gpu/prepare_llm.py /tmp/art /tmp/llm-specs-local --specs-only --colocated \
  --num-blocks "${NUM_BLOCKS:-1024}" --max-batch-tokens "${MAX_BATCH_TOKENS:-256}"
python -c "from uip.cli import main; main()" repo build --specs /tmp/llm-specs-local \
  --out /tmp/llm-repo-local
echo "prepared at +$(( $(date +%s) - T0 )) s"
for pair in grpc:/tmp/llm-repo local:/tmp/llm-repo-local; do
  name=${pair%%:*}; repo=${pair#*:}
  timeout "${BENCH_TIMEOUT:-240}" python -c "from uip.cli import main; main()" bench llm_bls \
    --model-repository "$repo" --device cuda --concurrency "$CONC" --prompt-tokens 128 \
    --distinct-prompts 64 --label "h200-$name" --measurement-ms "${WINDOW_MS:-6000}" \
    --out "$OUT" 2>&1 | grep -E "^\||rror" | tee "$OUT/llm_bls-h200-$name.bench.txt"
  echo "$name done at +$(( $(date +%s) - T0 )) s"
done
