#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, create the synthetic dataset, train the default bundle
# (DALE, UNet) and print where the model, the validation metrics and the logs are.
# Extra arguments are passed to `monai.bundle run`, e.g. --num_epochs 2.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${DALE_VENV:-.venv}/bin/python
"$PY" -m data_prep synthetic --dims 2 --out data/synthetic2d
# small networks on a few CPU cores run faster single-threaded than with competing OpenMP threads
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$PY" -m monai.bundle run training --config_file bundles/synthetic2d_unet/configs/train.json "$@"
