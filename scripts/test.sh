#!/usr/bin/env bash
# The whole test suite (installs .venv first if needed). .ci/run calls exactly this.
# Extra arguments go to pytest. pytest's own exit code is kept: 5 ("no tests ran") fails like any error.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tiny test networks run far slower with several OpenMP threads competing for 2 cores
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "${DALE_VENV:-.venv}/bin/python" -m pytest -q -p no:cacheprovider "$@"
