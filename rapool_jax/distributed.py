"""Multi-host start-up: ``jax.distributed.initialize()`` behind an environment switch."""

from __future__ import annotations

import os

import jax


def maybe_initialize() -> None:
  """Joins a multi-process job when ``RAPOOL_DISTRIBUTED=1`` (or SLURM/cluster env).

  With ``RAPOOL_DISTRIBUTED=1`` JAX reads the coordinator, process count and
  id from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``
  or detects SLURM / cloud TPU settings itself.
  """
  if os.environ.get("RAPOOL_DISTRIBUTED", "0") != "1":
    return
  kwargs = {}
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                  num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                  process_id=int(os.environ["JAX_PROCESS_ID"]))
  jax.distributed.initialize(**kwargs)
