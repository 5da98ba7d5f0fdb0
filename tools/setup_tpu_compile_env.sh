#!/usr/bin/env bash
# One command for the TPU compile environment (docs/TPU.md):
#
#   bash tools/setup_tpu_compile_env.sh [VENV_DIR]     # default: .tpu-venv in the repository
#
# makes a separate venv with requirements-tpu.txt (the runtime requirements + jax[tpu] at the
# tested jax version) and the project installed editable without touching its dependencies.
# libtpu stays out of the normal and test environments: it is large and makes jax probe for
# a TPU whenever it starts.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.tpu-venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r "$ROOT/requirements-tpu.txt"
"$VENV/bin/pip" install -q --no-deps -e "$ROOT"
# Fails here, with pip's own message, if the venv cannot import libtpu.
"$VENV/bin/python" -c "import libtpu, jax; print('TPU compile env ready:', '$VENV', 'jax', jax.__version__)"
