#!/usr/bin/env bash
# Creates .venv (once) and installs dale-monai with its test extras into it.
# torch is installed first and pinned (TORCH_SPEC overrides it) so that pip never resolves a
# bare "torch" to a multi-GB CUDA build on a CPU-only machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${DALE_VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.dale-installed"
want=$(cat setup.cfg pyproject.toml | sha1sum | cut -d' ' -f1)-$TORCH_SPEC
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
echo "[setup] installing $TORCH_SPEC"
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC" 2>&1 | { grep -v "^WARNING: Location" || true; }
echo "[setup] installing dale-monai and its dependencies (a few minutes on a fresh machine)"
"$VENV/bin/python" -m pip install -q -e ".[test]" 2>&1 | { grep -v "^WARNING: Location" || true; }
echo "$want" > "$stamp"
echo "[setup] done"
