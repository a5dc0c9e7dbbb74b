#!/usr/bin/env bash
# On the GPU machine, after `STAGE=prepare bash benchmarks/gpu/run_llm.sh`: `uip bench llm_bls`
# at CONC streams with every stub's Python threads sampled (UIP_PROFILE_DIR: uip.core.sampler),
# py-spy --gil on the llm_engine and llm_bls stubs where it can attach (carry its wheel in .whl),
# and the server's threads' CPU (top -H) while perf_analyzer runs. Prints a per-thread summary;
# raw files under ${OUT}/prof-${LABEL}/.
set -uo pipefail
OUT=${OUT:-benchmarks/results}
LABEL=${LABEL:-h200}
CONC=${CONC:-64}
P=$OUT/prof-$LABEL
export UIP_ARTIFACTS=/tmp/art UIP_PROFILE_DIR=$P UIP_PROFILE_INTERVAL_MS=${INTERVAL_MS:-10}
export PATH=/tmp/site/bin:$PATH
mkdir -p "$P"
uip() { python -c "from uip.cli import main; main()" "$@"; }
timeout "${BENCH_TIMEOUT:-300}" bash -c "$(declare -f uip); uip bench llm_bls \
  --model-repository /tmp/llm-repo --device cuda --concurrency $CONC --prompt-tokens 128 \
  --distinct-prompts 64 --label $LABEL-prof --measurement-ms ${WINDOW_MS:-3000} --out $OUT" \
  > "$P/bench.txt" 2>&1 &
BENCH=$!
for _ in $(seq 1 240); do pgrep -x perf_analyzer >/dev/null && break; sleep 1; done
sleep "${DELAY:-6}"
top -b -H -d 2 -n 3 -p "$(pgrep -d, -f 'triton_python_backend_stub|bin/tritonserver' | cut -d, -f1-20)" \
  > "$P/top.txt" 2>&1 &
if command -v py-spy >/dev/null; then
  for m in llm_engine llm_bls; do
    pid=$(pgrep -f "/$m/1/model.py" | head -1)
    [ -n "$pid" ] && timeout 20 py-spy record -p "$pid" -d 6 -r 200 --gil --threads --nonblocking \
      --format raw -o "$P/pyspy-gil-$m.txt" > "$P/pyspy-$m.log" 2>&1 &
  done
fi
wait $BENCH
grep -E "^\||wrote|uip:|rror" "$P/bench.txt"
python benchmarks/gpu/fold_summary.py "$P" --top 8 | cut -c1-200
awk '/^top -/{n++} n==3' "$P/top.txt" | head -40
tail -2 "$P"/pyspy-*.log 2>/dev/null
