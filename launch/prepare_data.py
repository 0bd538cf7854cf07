"""Builds the TFDS data a config names, once, before a fan-out starts its jobs
(parallel jobs would all build it into one data_dir at once). Takes the main
job's flags; writes ``--workdir``'s ``prepared.json`` with the split sizes."""

from __future__ import annotations

import json
import os

from absl import app
from absl import logging

from rapool_jax import errors
from rapool_jax import main as main_lib  # defines --config and --workdir
from rapool_jax.data import pipeline


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  with errors.one_line_errors():
    config = main_lib.FLAGS.config
    builder = pipeline.make_builder(config.data)
    splits = {name: info.num_examples
              for name, info in builder.info.splits.items()}
    os.makedirs(main_lib.FLAGS.workdir, exist_ok=True)
    with open(os.path.join(main_lib.FLAGS.workdir, "prepared.json"), "w") as f:
      json.dump({"data": config.data.name, "data_dir": builder.data_dir,
                 "splits": splits}, f, indent=1)
    print(f"data {config.data.name!r} ready in {builder.data_dir}: {splits}",
          flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=main_lib.parse_flags)
