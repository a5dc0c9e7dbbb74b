#!/usr/bin/env bash
# On the GPU machine (after the set-up in benchmarks/gpu/README.md): SD 1.5-shaped fp16, 512x512,
# 50 DDIM steps, CFG 7.5. `uip bench sd` through Triton (one stable_diffusion instance, in-flight
# step batching, co-located networks; STAGES picks the variants), then the compiled diffusers
# anchor (../shared/anchors/sd_anchor.py, copied to .anchors/) in the same device call.
# Results go to ${OUT:-benchmarks/results}; DEADLINE (epoch seconds) stops the anchor in time;
# ANCHOR_BATCHES (default 1,8) are the batches it times.
# SD_PARAMS="k=v k2=v2" adds spec parameters to every stage (e.g. "fuse_qkv=true").
set -uo pipefail
OUT=${OUT:-benchmarks/results}
STAGES=${STAGES:-graphs compiled}
CONC=${CONC:-1,8}
DEADLINE=${DEADLINE:-0}
export UIP_ARTIFACTS=${UIP_ARTIFACTS:-/tmp/art}
mkdir -p "$OUT" "$UIP_ARTIFACTS"
uip() { python -c "from uip.cli import main; main()" "$@"; }
common=(bench sd --config sd15 --device cuda --concurrency "$CONC" --requests-per-level 16
        --rounds 2 --placement colocated --sd-param graph_buckets=2,4,8,16 --skip-diffusers)
for stage in $STAGES; do
  case $stage in
    separate) extra=(--placement separate) ;;
    eager) extra=() ;;
    graphs) extra=(--sd-param cuda_graphs=true) ;;
    compiled) extra=(--sd-param cuda_graphs=true --sd-param compile=true
                     --sd-param compile_dynamic=false --sd-param compile_vae=true
                     --sd-param graph_buckets=${COMPILED_BUCKETS:-2,16}
                     --sd-param compile_cache_dir=/tmp/inductor-cache) ;;
    *) echo "unknown stage $stage"; continue ;;
  esac
  for kv in ${SD_PARAMS:-}; do extra+=(--sd-param "$kv"); done
  t0=$(date +%s)
  timeout "${STAGE_TIMEOUT:-240}" bash -c "$(declare -f uip); uip $(printf '%q ' "${common[@]}" \
      "${extra[@]}") --out $OUT/sd15-h200-$stage.md" 2>&1 | grep -v "^WARNING" \
      | tail -25 | tee "$OUT/sd15-h200-$stage.txt"
  echo "stage $stage: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/sd15-h200-$stage.txt"
done
if [ -f .anchors/sd_anchor.py ]; then
  python .anchors/sd_anchor.py "$UIP_ARTIFACTS/sd15-random" --deadline "$DEADLINE" \
      --batches "${ANCHOR_BATCHES:-1,8}" --json "$OUT/sd-anchor.json" 2>&1 | grep -v "^WARNING" | tail -12 | tee "$OUT/sd-anchor.txt"
fi
