#!/usr/bin/env bash
# On the GPU machine, after `STAGE=prepare bash benchmarks/gpu/run_llm.sh`: `uip bench llm_bls`
# at CONC streams (the usual table: Triton beside the in-process engine) while, during the
# perf_analyzer run of concurrency AT, py-spy --gil samples the llm_engine and llm_bls stubs
# (carry its wheel: benchmarks/gpu/README.md), top -H reads the server's threads' CPU, and the
# engine's metrics (steps by path, tokens) are read twice DUR seconds apart. SAMPLER=1 also
# samples every stub thread for the whole run (uip.core.sampler, UIP_PROFILE_DIR). Prints a
# summary; everything lands in ${OUT}/prof-${LABEL}.tar.gz.
set -uo pipefail
OUT=${OUT:-benchmarks/results}
LABEL=${LABEL:-h200}
CONC=${CONC:-64}
AT=${AT:-${CONC##*,}}
DUR=${DUR:-6}
P=/tmp/prof-$LABEL
export UIP_ARTIFACTS=/tmp/art PATH=/tmp/site/bin:$PATH
if [ "${SAMPLER:-0}" = 1 ]; then export UIP_PROFILE_DIR=$P UIP_PROFILE_INTERVAL_MS=10; fi
mkdir -p "$P" "$OUT"
uip() { python -c "from uip.cli import main; main()" "$@"; }
timeout "${BENCH_TIMEOUT:-300}" bash -c "$(declare -f uip); uip bench llm_bls \
  --model-repository /tmp/llm-repo --device cuda --concurrency $CONC --prompt-tokens 128 \
  --distinct-prompts 64 --label $LABEL --measurement-ms ${WINDOW_MS:-3000} --out $OUT" \
  > "$P/bench.txt" 2>&1 &
BENCH=$!
for _ in $(seq 1 400); do pgrep -f "concurrency-range $AT:" >/dev/null && break; sleep 1; done
sleep "${DELAY:-5}"
METRICS=$(pgrep -a tritonserver | grep -o -- '--metrics-port[= ][0-9]*' | grep -o '[0-9]*$' | head -1)
metrics() { python -c "import urllib.request as u; print(u.urlopen('http://localhost:$METRICS/metrics').read().decode())" | grep -E '^uip_llm_(engine_steps|tokens_gen|active|waiting)'; }
metrics > "$P/metrics-0.txt"
top -b -H -d 2 -n 3 -p "$(pgrep -d, -f 'triton_python_backend_stub|bin/tritonserver' | cut -d, -f1-20)" \
  > "$P/top.txt" 2>&1 &
if command -v py-spy >/dev/null; then
  for m in llm_engine llm_bls; do
    pid=$(pgrep -f "/$m/1/model.py" | head -1)
    [ -n "$pid" ] && timeout $((DUR + 14)) py-spy record -p "$pid" -d "$DUR" -r 200 --gil \
      --threads --nonblocking --format raw -o "$P/pyspy-gil-$m.txt" > "$P/pyspy-$m.log" 2>&1 &
  done
fi
sleep "$DUR"
metrics > "$P/metrics-1.txt"
wait $BENCH
tar -C /tmp -czf "$OUT/prof-$LABEL.tar.gz" "prof-$LABEL"
grep -E "^\||wrote|uip:|rror" "$P/bench.txt"
echo "--- engine metrics over ${DUR} s at $AT streams (before, after)"; paste -d'|' "$P/metrics-0.txt" "$P/metrics-1.txt" | sed 's/{[^}]*path="\([a-z_]*\)"[^}]*}/[\1]/; s/{[^}]*}//g'
python benchmarks/gpu/fold_summary.py "$P" --top 8 | cut -c1-160
echo "--- top -H (last of 3 readings)"; awk '/^top -/{n++} n==3' "$P/top.txt" | head -30
tail -n 2 "$P"/pyspy-*.log 2>/dev/null
