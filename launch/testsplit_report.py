"""The test-split table of the ``configs/isic2017.py:testsplit`` seeds.

    python -m launch.testsplit_report RUN_DIR [RUN_DIR ...] --out OUT
        [--expected-seeds 0,1,2,3,4] [--comparisons CONFIG]
        [--exclude-images FILE | --near-copies-from RUN_DIR [--data-root DIR]]
    python -m launch.testsplit_report --rebuild OUT
    python -m launch.testsplit_report --check OUT

Each RUN_DIR is one seed (``--config.seed=S``) trained on the official
training split; its per-image predictions on the test split (600 images) and
on the validation split (where thresholds are set) go to OUT:

* ``test_scores.csv`` and ``val_scores.csv``: ``image,label,seed``, then one
  score column per arm; one row per image and seed;
* ``runs.csv``: ``seed,finished``, every seed meant to run;
* ``arms.csv`` and ``comparisons.csv``: the comparisons the runs' config
  declares by arm name (see ``launch/crossval_report.py``);
* ``test_near_copies.csv`` (with ``--exclude-images``, or found by
  ``folds.near_copies`` on a run's data with ``--near-copies-from``): test
  images with a near-copy in train + validation (``image[,reference]``);
  every verdict is given with and without them;
* ``results.json`` and ``results.md``: per arm the test AUC of each seed
  (mean ± SD) and of the seed-averaged per-image score with its DeLong CI;
  paired differences on the seed-averaged scores (DeLong and bootstrap);
  sensitivities at thresholds from the seed-averaged validation scores,
  compared only at matched specificity.

``--check OUT`` recomputes every figure of results.json and results.md from
the CSVs and fails, naming what differs (see ``launch/crossval_report.py``).
The work is done by ``rapool_jax/analysis/testsplit.py``.
"""

from __future__ import annotations

import os
import sys

from launch import crossval_report
from rapool_jax.analysis import commands
from rapool_jax.analysis import near_copies
from rapool_jax.analysis import recompute
from rapool_jax.analysis import testsplit
from rapool_jax import errors

compute_all = testsplit.compute_all
markdown_of = lambda out: testsplit.markdown  # noqa: E731


def check(out: str) -> list[str]:
  """Differences between OUT's tables and a recomputation from its CSVs."""
  return recompute.check(out, testsplit.compute_all, testsplit.markdown)


def write_report(run_dirs, out: str, expected_seeds=(), exclude_images="",
                 comparisons_from: str = "") -> dict:
  """Collects RUN_DIRS' predictions into OUT's CSVs, then the tables;
  ``exclude_images`` and ``comparisons_from`` as
  ``crossval_report.write_report``'s."""
  os.makedirs(out, exist_ok=True)
  collected = testsplit.collect(
      run_dirs, crossval_report.declaring(comparisons_from))
  testsplit.write_csvs(out, collected, expected_seeds)
  near_copies.write(out, exclude_images)
  return recompute.write_tables(out, testsplit.compute_all, testsplit.markdown)


def main(argv=None) -> int:
  parser = commands.report_parser(__doc__, "one run workdir per seed",
                                  "--expected-seeds",
                                  "comma-separated seeds meant to run")
  return commands.main(
      parser, argv, testsplit.compute_all, markdown_of,
      lambda args: write_report(
          args.runs, args.out,
          [int(s) for s in args.expected_seeds.split(",") if s],
          commands.near_copy_choice(args), args.comparisons), "run workdirs")


if __name__ == "__main__":
  with errors.one_line_errors():
    sys.exit(main())
