#!/usr/bin/env bash
# Table 1 on miniImageNet-lite with the `gpu` profile: one command, sized for about 10 minutes on
# one H100 (not yet run: no GPU was available to the session that wrote it; see docs/results.md).
# The data must be reachable through MTL_DATA_ROOT on the GPU machine (copy miniimagenet-lite/
# into an ignored folder of the checkout and point MTL_DATA_ROOT at it).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/mtl ]]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
  .venv/bin/pip install --quiet -e '.[dev]'
fi
nvidia-smi --query-gpu=name,memory.total --format=csv
.venv/bin/mtl bench table1 --dataset miniimagenet-lite --profile gpu --device cuda "$@"
