#!/usr/bin/env bash
# Sets up a development environment in .venv: PyTorch first (CPU build by default, so pip
# does not pull a multi-GB CUDA build), then fbanet in editable mode with its test tools.
# Override the PyTorch requirement with TORCH_SPEC, e.g. TORCH_SPEC="torch" on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -c "import fbanet, torch; print('fbanet', fbanet.__version__, '| torch', torch.__version__)"
