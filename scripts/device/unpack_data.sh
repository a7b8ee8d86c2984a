#!/usr/bin/env bash
# On the device: unpack the carried data to .gpu/shared/data (same layout as ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -d .gpu/shared/data ] || tar xJf .gpu/data.tar.xz -C .gpu
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, transformers, sklearn, scipy; print('torch', torch.__version__, 'transformers', transformers.__version__, 'sklearn', sklearn.__version__)"
