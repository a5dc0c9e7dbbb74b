#!/usr/bin/env bash
# One device call: which SDPA kernel the UNet's own attention calls can take, and how fast
# (sdpa_check.py, eager: flash and cuDNN through SDPA, with and without fuse_qkv, and
# uip.sd.attention's cuDNN processor; CHECK_ARGS=--processor-only: flash and the processor),
# then the Triton row at concurrency 8 (run_sd.sh, compiled, 16-row graph) with the set-up it
# picks, then, time allowing (BASELINE=1), the same row with the plain compiled UNet, then the
# compiled diffusers anchor at batch 8 when .anchors is carried (../shared/anchors).
# UNET_VARIANT=compile-cudnn-self: after the check, that sd_variants.py build of the UNet
# alone (16 rows, its kernel profile) instead of the Triton rows (a call of ~3 minutes).
#   OUT=$OUT CHECK_ARGS=--processor-only BASELINE=1 bash benchmarks/gpu/run_sd_attention.sh
set -uo pipefail
T0=$(date +%s); END=$((T0 + ${BUDGET_S:-520}))
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
source benchmarks/gpu/device_env.sh
python -c "from pathlib import Path; from uip.artifacts.sd_tiny import build; \
build(Path('/tmp/art/sd15-random'), config='sd15', dtype='float16')" 2>&1 | tail -1
(cd benchmarks/gpu && python sdpa_check.py /tmp/art/sd15-random --json "$OUT/sdpa-check.json" ${CHECK_ARGS:-}) \
  2>&1 | grep -vE "^WARNING|UserWarning|warnings.warn" | tee "$OUT/sdpa-check.txt"
CHOICE=$(grep "^choice:" "$OUT/sdpa-check.txt" | tail -1 | cut -d' ' -f2-)
echo "chosen: ${CHOICE:=sdpa=auto fuse_qkv=false self_attention=sdpa} (+$(( $(date +%s) - T0 )) s)"
if [ -n "${UNET_VARIANT:-}" ]; then  # the compiled UNet alone (sd_variants.py), no server
  cd benchmarks/gpu && timeout $((END - $(date +%s))) python sd_variants.py /tmp/art/sd15-random \
    --variants "$UNET_VARIANT" --rows 16 --skip-loop --profile --json "$OUT/sd-variants.json" \
    2>&1 | grep -vE "AUTOTUNE|triton_mm|triton_conv|strides|dtypes|^WARNING" \
    | tee "$OUT/sd-variants.txt"
  echo "done at +$(( $(date +%s) - T0 )) s"; exit 0
fi
row() {  # $1: results folder, $2: spec parameters
  OUT=$1 STAGES=compiled CONC=8 COMPILED_BUCKETS=16 STAGE_TIMEOUT=${STAGE_TIMEOUT:-250} \
    ANCHOR_BATCHES=8 DEADLINE=$END SD_PARAMS="$2" bash benchmarks/gpu/run_sd.sh
}
if [ "${BASELINE:-0}" = 1 ]; then
  mv .anchors /tmp/anchors-later 2>/dev/null  # the anchor runs once, after the last row
  row "$OUT" "$CHOICE cudnn_benchmark=true"
  mv /tmp/anchors-later .anchors 2>/dev/null
  if [ $((END - $(date +%s))) -gt "${STAGE_TIMEOUT:-250}" ]; then
    row "$OUT/baseline" "cudnn_benchmark=true"
  else
    echo "baseline row skipped (deadline)"
  fi
else
  row "$OUT" "$CHOICE cudnn_benchmark=true"
fi
echo "done at +$(( $(date +%s) - T0 )) s"
