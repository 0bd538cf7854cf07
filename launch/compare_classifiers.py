"""Table 3: classifiers on the same pooled features of a finished run.

    python -m launch.compare_classifiers --run RUN [--workdir OUT]

The softmax head, RankOpt and class-weighted logistic regression on RUN's
evaluation split (``rapool_jax/analysis/classifiers.py``) -> ``OUT/table3.md``,
``.json``, ``table3_roc.png`` (OUT: ``RUN/table3``). ``--smoke`` without
``--run`` first trains ``configs/tiny.py`` into ``OUT/run``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from launch import common
from launch import fanout
from rapool_jax import config_lib
from rapool_jax import errors
from rapool_jax import run as run_lib
from rapool_jax.analysis import classifiers
from rapool_jax.data import pipeline


def run_features(run: str, data_dir: str = "") -> dict:
  """``{role: {"split", "pooled" [N, D], "probs" [N, K], "labels" [N]}}`` of
  RUN's final network for the roles train, val, eval and threshold, plus
  ``config``, ``pooling`` and ``rankopt`` (the fitted one or None)."""
  # predict defines absl flags that clash with main's, which the docs' dry
  # parse (tests/test_commands.py) imports beside this module.
  from rapool_jax import predict  # pylint: disable=g-import-not-at-top
  config, _, variables, pooling, fitted = predict.load_run(run)
  # A run made before a config key existed: the key's default.
  _fill_missing(config, config_lib.base_config())
  if data_dir:
    config.data.data_dir = data_dir
  job = run_lib.setup(config, run)
  out = {"config": config, "rankopt": fitted, "pooling": pooling}
  for role, name in (("train", config.data.train_split),
                     ("val", config.data.val_split),
                     ("eval", config.data.eval_split),
                     ("threshold", config.rankopt.threshold_split)):
    split = job.splits.get(name) if name else None
    if name and split is None:  # RankOpt's threshold split may not be loaded
      split = pipeline.load_split(pipeline.make_builder(config.data), name,
                                  config.data.task)
    if name:
      pred = job.predict(variables, split, pooling)
      out[role] = {"split": name, "pooled": pred["pooled"],
                   "probs": pred["probs"],
                   "labels": (split.labels == 1).astype(np.int32)}
  return out


def _fill_missing(config, defaults) -> None:
  """Adds the keys of ``defaults`` that ``config`` lacks, recursively."""
  for key in defaults.keys():
    if key not in config:
      config[key] = defaults[key]
    elif hasattr(config[key], "keys") and hasattr(defaults[key], "keys"):
      _fill_missing(config[key], defaults[key])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", default="", help="workdir of a finished run")
  parser.add_argument("--workdir", default="",
                      help="where the table goes (default RUN/table3)")
  parser.add_argument("--data-dir", default="",
                      help="TFDS data_dir, if not the run's")
  parser.add_argument("--smoke", action="store_true",
                      help="without --run: train configs/tiny.py into OUT/run")
  args, overrides = common.parse_args(parser, argv)
  run = args.run
  if not run:
    if not (args.smoke and args.workdir):
      raise SystemExit("--run RUN is required (or --smoke --workdir OUT)")
    root = os.path.abspath(args.workdir)
    config = common.resolve_config(None, True)
    run = os.path.join(root, "run")
    jobs = [fanout.prepare_job(root, config, overrides),
            fanout.Job(name="run", workdir=run, config=config,
                       overrides=list(overrides))]
    if not fanout.execute(args, jobs, root):
      return 0
    if not fanout.is_finished(jobs[1]):
      return 1
  run = os.path.abspath(run)
  out_dir = os.path.abspath(args.workdir or os.path.join(run, "table3"))
  os.makedirs(out_dir, exist_ok=True)
  feats = run_features(run, args.data_dir)
  classifiers.table3(out_dir, run, feats)
  return 0


if __name__ == "__main__":
  with errors.one_line_errors():
    sys.exit(main())
