#!/bin/bash
# One leased GPU's benchmark, in one command (a lease is minutes, not hours):
#   bash benchmarks/run_gpu.sh OUT_DIR [TIME_BUDGET_S]
# Installs carried wheels from .whl/ (packages the GPU image lacks, e.g.
# ml_collections), records the software, then runs the full-size benchmark
# under a time budget: rows run most-wanted first and the JSON is rewritten
# after each row, so a cut-short run still leaves its measurements.
set -u -o pipefail
out=${1:?usage: run_gpu.sh OUT_DIR [TIME_BUDGET_S]}
budget=${2:-420}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  | tee "$out/nvidia_smi.txt"
python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'torch', \
torch.__version__, jax.devices())" 2>&1 | tee "$out/versions.txt"
python3 -m rapool_jax.benchmark --out "$out/benchmark.json" \
  --time-budget-s "$budget" 2>&1 | tee "$out/benchmark.log"
