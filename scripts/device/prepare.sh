#!/usr/bin/env bash
# Prepare the ignored .gpu/ folder that device calls carry (64 MiB per call at most):
#   .gpu/data.tar.xz   the shared evaluation and training data (3 MB)
#   .gpu/pylib/gguf    the pure-Python gguf package and its dist-info (the GPU image lacks it)
#   .gpu/part_a, .gpu/part_b   the SmolLM2 GGUF (98 MB) in two halves, one per call, joined there
#   .gpu/gguf.sha256   checksum of the joined file
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
rm -rf .gpu && mkdir -p .gpu/pylib
GGUF_PKG=$($PY -c 'import gguf, os; print(os.path.dirname(gguf.__file__))')
cp -r "$GGUF_PKG" .gpu/pylib/gguf
cp -r "$(dirname "$GGUF_PKG")"/gguf-*.dist-info .gpu/pylib/  # transformers reads gguf's version from it
find .gpu/pylib -name __pycache__ -prune -exec rm -rf {} +
tar cJf .gpu/data.tar.xz -C .. shared/data
GGUF=$($PY -c 'from llm_embed.bundled import smollm2_gguf_file; print(smollm2_gguf_file())')
SIZE=$(stat -c %s "$GGUF")
HALF=$(( SIZE / 2 ))
head -c $HALF "$GGUF" > .gpu/part_a
tail -c +$(( HALF + 1 )) "$GGUF" > .gpu/part_b
(cd "$(dirname "$GGUF")" && sha256sum "$(basename "$GGUF")") > .gpu/gguf.sha256
du -sh .gpu/* 
