#!/bin/bash
# One training job over several machines without a scheduler: run this on every
# machine with the same arguments and its own process id.
#
#   # machine 0 (also the coordinator, reachable at HOST0:12345):
#   launch/multihost.sh HOST0:12345 2 0 configs/isic2017.py runs/isic_2n
#   # machine 1:
#   launch/multihost.sh HOST0:12345 2 1 configs/isic2017.py runs/isic_2n
#
# WORKDIR must be on a file system every machine sees (checkpoints are written
# once, by orbax's primary process, and read by all on resume).
set -euo pipefail
if [ $# -lt 5 ]; then
  echo "usage: $0 COORDINATOR_HOST:PORT NUM_PROCESSES PROCESS_ID CONFIG WORKDIR [overrides...]" >&2
  exit 2
fi
export RAPOOL_DISTRIBUTED=1 JAX_COORDINATOR_ADDRESS=$1 JAX_NUM_PROCESSES=$2 JAX_PROCESS_ID=$3
CONFIG=$4; WORKDIR=$5; shift 5
exec python -m rapool_jax.main --config "$CONFIG" --workdir "$WORKDIR" "$@"
