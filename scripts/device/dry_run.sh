#!/usr/bin/env bash
# CPU dry run of the device plan, here, before any device time is spent: prepare the carried files,
# then run scripts/device/study.sh exactly as the device would (unpack, GGUF join and checksum,
# PYTHONPATH with the carried gguf package, all five designs x seeds 0 and 1, runs copied out),
# on a tiny random backbone, 2 steps, small task subsets. Then build the reports from the copied runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
[ -f .gpu/part_b ] || bash scripts/device/prepare.sh
rm -rf .gpu/study_out .gpu/shared
$PY scripts/device/tiny_backbone.py .gpu/tiny > /dev/null
export OUT=${OUT:-/tmp/llm_embed_dry_run}
rm -rf "$OUT" && mkdir -p "$OUT"
PATH="$(dirname "$PY"):$PATH" STUDY_SECONDS=900 bash scripts/device/study.sh --backbone .gpu/tiny --device cpu \
    --max-steps 2 --batch-size 4 --eval-batch-size 16 --score-workers 1 --max-seq-length 32 \
    --task-limit 20 scifact_corpus=40 banking77_train=154 banking77=77 stackoverflow=100
mkdir -p "$OUT/study" && tar xzf "$OUT/study_runs.tgz" -C "$OUT/study"
ls "$OUT/study/runs"
$PY -m llm_embed.study --report-only --no-plot --output-dir "$OUT/study" > /dev/null
echo "dry run OK: $(ls "$OUT"/study/runs/design*.json | wc -l) runs, reports in $OUT/study"
rm -rf .gpu/study_out
