#!/usr/bin/env bash
# One command: a real MONAI Label server with this project's bundles, checked through its REST API.
#
#   bash scripts/monailabel_check.sh [--bundles synthetic3d_unet synthetic2d_unet] [--no-record] [--keep] ...
#
# 1. Creates .venv-monailabel (once; DALE_MONAILABEL_VENV overrides) with monailabel, its dependencies pinned by
#    scripts/monailabel-constraints.txt, and this project installed editable (--no-deps: its own dependencies are
#    installed beside monailabel's, see below).
# 2. Runs scripts/monailabel_check.py in it: per bundle, the monaibundle sample app with a copy of the bundle in its
#    model/ folder, a tiny synthetic studies folder, a server on 127.0.0.1 (a free port), GET /info/, POST /infer,
#    POST /train (single process, then under torchrun as MONAI Label's multi-GPU path does), PASS/FAIL per step.
#    The outcome is recorded in docs/monailabel.md unless --no-record. The server is always stopped (trap below).
# Other arguments go to the driver (python scripts/monailabel_check.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${DALE_MONAILABEL_VENV:-.venv-monailabel}
CONSTRAINTS=$PWD/scripts/monailabel-constraints.txt
WORKDIR=${MONAILABEL_CHECK_WORKDIR:-runs/monailabel}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[monailabel] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.dale-monailabel-installed"
want=$(cat "$CONSTRAINTS" setup.cfg | sha1sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[monailabel] $VENV is up to date"
else
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  # PIP_CONSTRAINT (not -c) so that the pins hold in build-isolation environments too (sam2 is an sdist that
  # builds against torch); SAM2_BUILD_CUDA=0: its optional CUDA extension is not needed (the check runs with
  # --conf sam2 false).
  export PIP_CONSTRAINT=$CONSTRAINTS SAM2_BUILD_CUDA=0
  # dale-monai's own requirements, except jsonschema: pydicom-seg (a monailabel dependency) needs jsonschema<4,
  # which only `monai.bundle verify_metadata` uses here, not training or inference.
  deps=$("$PY" scripts/monailabel_check.py --print-project-requirements)
  echo "[monailabel] installing monailabel and dale-monai's dependencies into $VENV (several GB, minutes)"
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q monailabel $deps 2>&1 | { grep -v "^WARNING: Location" || true; }
  "$VENV/bin/python" -m pip install -q --no-deps -e . 2>&1 | { grep -v "^WARNING: Location" || true; }
  unset PIP_CONSTRAINT
  echo "$want" > "$stamp"
fi

mkdir -p "$WORKDIR"
PIDFILE=$PWD/$WORKDIR/server.pid
stop_server() {
  # the driver stops its server itself; this catches a driver killed before it could (SIGKILL, OOM)
  if [ -f "$PIDFILE" ]; then
    pgid=$(cat "$PIDFILE")
    if kill -0 -- "-$pgid" 2>/dev/null; then
      echo "[monailabel] stopping server process group $pgid"
      kill -TERM -- "-$pgid" 2>/dev/null || true
      sleep 5
      kill -KILL -- "-$pgid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
  fi
}
trap stop_server EXIT INT TERM
"$VENV/bin/python" scripts/monailabel_check.py --workdir "$WORKDIR" --pidfile "$PIDFILE" "$@"
