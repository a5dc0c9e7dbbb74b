#!/usr/bin/env bash
# `uip bench gateway` on the GPU machine's CPU cores (CPU tiny model; the GPU is not used):
# tritonserver, the gateway and the bench client each pinned to their own cores (--cpus auto:
# client and gateway 2 cores each, the server the rest), so the gateway's cost shows as what
# it adds, not as CPU taken from a CPU-bound server. One device call of about 4 minutes (set-up ~1, bench <= 230 s).
# Carry .devcarry (bash ../shared/device/pack.sh) and .whl (benchmarks/gpu/README.md, with the
# gateway's wheels). Results go to ${OUT:-benchmarks/results}/gateway-$LABEL.*
# Here (CPU, set-up skipped when uip already imports): CPUS= ROUNDS=2 bash benchmarks/gpu/run_gateway.sh
# GATEWAY_WORKERS=N: the gateway's worker processes (default: one per core of its CPU list).
set -uo pipefail
OUT=${OUT:-benchmarks/results}
LABEL=${LABEL:-h200-cpu}
CONC=${CONC:-1,8,32}
ROUNDS=${ROUNDS:-4}
CPUS=${CPUS-auto}
GATEWAY_WORKERS=${GATEWAY_WORKERS:-}  # default: one per core of the gateway's CPU list, else 1
export UIP_ARTIFACTS=${UIP_ARTIFACTS:-/tmp/art}
mkdir -p "$OUT" "$UIP_ARTIFACTS"
if [ -z "${TRITONSERVER:-}" ] && [ -f .devcarry/setup.sh ]; then
  source .devcarry/setup.sh
fi
if ! python -c "import uip.gateway.app, aiohttp" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  SP=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  printf "/tmp/site\n$PWD/python_backends\n" > "$SP/uip-dev.pth"  # the stub ignores PYTHONPATH
fi
python -c "import grpc, uvloop, httptools, fastapi, aiohttp, sqlalchemy, sqlite_vec, psutil
from uip.gateway.store import sqlite_module; sqlite_module()  # a sqlite3 that loads extensions
" || { echo "run_gateway.sh: a module is missing (see benchmarks/gpu/README.md)"; exit 1; }
echo "cores: $(nproc); $(uptime)" | tee "$OUT/gateway-$LABEL.txt"
timeout "${BENCH_TIMEOUT:-230}" python -c "from uip.cli import main; main()" bench gateway \
  --concurrency "$CONC" --rounds "$ROUNDS" --cpus "$CPUS" --label "$LABEL" --out "$OUT" \
  ${GATEWAY_WORKERS:+--gateway-workers "$GATEWAY_WORKERS"} 2>&1 \
  | grep -v "^WARNING" | grep -E "^\||streams:|pinned|workers|wrote|rror" \
  | tee -a "$OUT/gateway-$LABEL.txt"
echo "after: $(uptime)" | tee -a "$OUT/gateway-$LABEL.txt"
