#!/bin/bash
# One leased GPU's measurements, in one command (a lease is minutes, not hours):
#   bash benchmarks/run_gpu.sh OUT_DIR [TIME_BUDGET_S] [PART ...]
# PARTs, run in the order given (default: benchmark):
#   benchmark  the full-size benchmark, JAX and torch (benchmark.json)
#   variants   the joint step at 256, JAX and torch, then the JAX step's
#              JOINT_VARIANTS, each also as a ratio to that torch row
#              (joint_variants.json)
# Installs carried wheels from .whl/ (packages the GPU image lacks, e.g.
# ml_collections) and records the software first. The benchmark and variants
# parts run under TIME_BUDGET_S each: rows run most-wanted first and the JSON
# is rewritten after each row and each analysis piece (the variants are one),
# so a cut-short run keeps its measurements.
set -u -o pipefail
out=${1:?usage: run_gpu.sh OUT_DIR [TIME_BUDGET_S] [benchmark|variants ...]}
budget=${2:-420}
shift $(( $# < 2 ? $# : 2 ))
parts=("${@:-benchmark}")
for part in "${parts[@]}"; do
  case $part in
    benchmark|variants) ;;
    *) echo "run_gpu.sh: unknown part '$part' (benchmark, variants)"
       exit 2 ;;
  esac
done
mkdir -p "$out"
install() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site "$@"
}
if compgen -G ".whl/*.whl" > /dev/null; then
  # One wheel that does not fit this Python must not cost the others.
  install .whl/*.whl || for w in .whl/*.whl; do
    install "$w" || echo "run_gpu.sh: could not install $w; going on"
  done
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
status=0
for part in "${parts[@]}"; do
  case $part in
    benchmark)
      python3 -m benchmarks.benchmark --out "$out/benchmark.json" \
        --time-budget-s "$budget" 2>&1 | tee "$out/benchmark.log" ;;
    variants)
      python3 -m benchmarks.benchmark --out "$out/joint_variants.json" \
        --step-kinds joint --batches 256 \
        --time-budget-s "$budget" 2>&1 | tee "$out/joint_variants.log" ;;
  esac
  status=$(( status || $? ))
done
exit $status
