"""Trains the tiny config's stages and saves the final parameters (run as a script).

    python tests/multidevice_train.py OUT.npz DATA_DIR WORKDIR

The device count comes from the environment (XLA_FLAGS, or several processes
with RAPOOL_DISTRIBUTED=1), so tests can compare 1 device, 8 devices and
2 processes on the same data and seed.
"""

import sys

import jax
import numpy as np

from rapool_jax import config_files
from rapool_jax import distributed
from rapool_jax import optim
from rapool_jax import run
from rapool_jax import sharding
from rapool_jax import train
from rapool_jax import xla_flags

# As tests/conftest.py does, so that this script and the tests compile alike.
xla_flags.apply_xla_flags(xla_flags.cpu_xla_flags())


def main(out, data_dir, workdir):
  distributed.maybe_initialize()
  config = config_files.load(config_files.resolve("configs/tiny.py"))
  config.data.data_dir = data_dir
  config.train.eval_batch_size = 8
  config.model.dropout_rate = 0.0  # dropout masks depend on the partitioning
  # A small step keeps float round-off (reduction order differs with the
  # device count) from being amplified over the run.
  for name in config.stage_order:
    config.stages[name].lr = 0.01
  job = run.setup(config, workdir)
  variables = train.init_variables(job.model, job.key, config.data.crop_size,
                                   config.model)
  for index in range(len(config.stage_order)):
    variables, _ = run.run_stage(job, config, workdir, index, variables, {})
  flat = {optim.path_str(p): sharding.to_host(v)
          for p, v in jax.tree_util.tree_leaves_with_path(variables)}
  if jax.process_index() == 0:
    np.savez(out, devices=jax.device_count(), **flat)


if __name__ == "__main__":
  main(*sys.argv[1:4])
