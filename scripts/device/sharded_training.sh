#!/usr/bin/env bash
# Issue 14 part 2's GPU check in one device call (carry .gpu/tiny from scripts/device/tiny_backbone.py;
# timeout_s 300): llm-embed-train with DDP, FSDP2 (+GradCache) and DeepSpeed ZeRO-2/3 (if the image
# has deepspeed), one process per GPU, saved models compared with DDP's -> $OUT/sharded_training.json.
# CPU dry run: OUT=/tmp/sharded DEVICE=cpu PATH=.venv/bin:$PATH bash scripts/device/sharded_training.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
OUT=${OUT:-/tmp/sharded_out}
mkdir -p "$OUT"
[ -d .gpu/tiny ] || python scripts/device/tiny_backbone.py .gpu/tiny || exit 1
timeout "${SHARDED_SECONDS:-270}" python scripts/device/sharded_training.py --backbone .gpu/tiny --out "$OUT/runs" \
    --device "${DEVICE:-cuda}" "$@"
status=$?
cp "$OUT/runs/sharded_training.json" "$OUT/" 2>/dev/null
tar czf "$OUT/sharded_logs.tgz" -C "$OUT/runs" $(cd "$OUT/runs" && ls *.log *.json 2>/dev/null)
rm -rf "$OUT/runs"  # the models: the device tool returns few files
echo "exit $status"
exit $status
