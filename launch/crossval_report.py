"""The out-of-fold and test-split tables of a cross-validation (``launch/crossval.py``).

    python -m launch.crossval_report RUN_DIR [RUN_DIR ...] --out OUT
        [--expected-runs 0:0,1:0,...] [--comparisons CONFIG]
        [--exclude-images FILE | --near-copies-from RUN_DIR [--data-root DIR]]
    python -m launch.crossval_report --rebuild OUT
    python -m launch.crossval_report --check OUT

From each fold run's per-image predictions it writes to OUT:

* ``oof_scores.csv``: ``image,label,fold,seed``, then one score column per arm;
  one row per image and seed (each image scored by the run of that seed that
  never trained on it);
* ``oof_jaccard.csv``: the same layout, per-image Jaccard of each arm's mask;
* ``thresholds.csv``: per fold, seed and arm, the thresholds reaching
  specificity 0.884 and 0.923 on that fold's inner validation split (training
  data of the fold, never the scored images);
* ``test_scores.csv`` (when the runs scored the official test split):
  ``image,label,seed,fold``, then each fold model's score of each test image;
* ``runs.csv``: ``fold,seed,finished``, every run the CV was meant to have;
* ``arms.csv`` (arm name -> column) and ``comparisons.csv``: the comparisons
  the runs' config declares by arm name (``report.comparisons``; those whose
  arm its stage_order does not train are left out, and printed), or the
  config ``--comparisons`` names (runs made before configs declared them);
* ``test_near_copies.csv`` (with ``--exclude-images``, or found by
  ``folds.near_copies`` on a run's data with ``--near-copies-from``): the
  test images with a near-copy in train + validation (``image[,reference]``),
  reported with and without them;
* ``results.json``, ``results.md`` and ``roc_seed<S>.png``.

The tables: per arm, per-seed AUCs (mean ± SD) and the AUC of the seed-averaged
per-image score with its DeLong CI; paired differences on the seed-averaged
scores, pooled and fold-stratified; sensitivities compared only at matched
specificity; per seed the operating points at the validation thresholds; and
the same verdicts on the test split, where an arm's score of an image is the
mean over its fold and seed models. Every number is a function of the CSVs:
``--check OUT`` recomputes ``results.json`` and ``results.md`` from them and
fails, naming what differs, on any missing, extra or altered figure, row or
arm, on an image scored other than once per seed, and on a comparison whose
arm the CSVs lack. ``--rebuild OUT`` rewrites the tables from the CSVs.
The work is done by ``rapool_jax/analysis/`` (``crossval``, ``crossval_text``).
"""

from __future__ import annotations

import json
import os
import sys

from launch import common
from rapool_jax.analysis import commands
from rapool_jax.analysis import crossval as cv
from rapool_jax.analysis import crossval_text
from rapool_jax.analysis import design
from rapool_jax.analysis import near_copies
from rapool_jax.analysis import recompute
from rapool_jax.analysis import tables
from rapool_jax import errors

# What launch/crossval.py calls.
add_near_copy_args = commands.add_near_copy_args
near_copy_choice = commands.near_copy_choice


def markdown_of(out: str):
  """OUT's markdown function (its arms.csv names Table 3's rows)."""
  return lambda results: crossval_text.markdown(results, design.read(out)[0])


def check(out: str) -> list[str]:
  """Differences between OUT's tables and a recomputation from its CSVs."""
  return recompute.check(out, cv.compute_all, markdown_of(out))


def plot_rocs(out: str) -> None:
  """``roc_seed<S>.png``: each seed's out-of-fold ROC curves."""
  t = cv.read_tables(out)
  for seed, g in t["oof"].groupby("seed"):
    tables.plot_roc(os.path.join(out, f"roc_seed{seed}.png"),
                    g["label"].to_numpy(),
                    {a: g[a].to_numpy() for a in t["arms"]},
                    f"Out-of-fold ROC, seed {seed}", cv.SPECIFICITIES)


def declaring(spec: str) -> dict | None:
  """The config ``--comparisons`` names (FILE[:ARG]) as JSON; None without."""
  return (json.loads(common.load_config(spec).to_json_best_effort())
          if spec else None)


def write_report(run_dirs, out: str, expected=None, exclude_images="",
                 comparisons_from: str = "") -> dict:
  """Collects RUN_DIRS' predictions into OUT's CSVs, then the tables.

  ``expected``: every (fold, seed) the CV was meant to have (default: the
  runs given); missing ones put the partial banner on results.md.
  ``exclude_images``: the test images with a near-copy in train +
  validation, as a file of ids or ``near_copies.near_copy_rows``.
  ``comparisons_from``: a config whose comparisons to use instead of the
  runs' own (for runs made before configs declared them).
  """
  os.makedirs(out, exist_ok=True)
  cv.write_csvs(out, cv.collect(run_dirs, declaring(comparisons_from)),
                expected)
  near_copies.write(out, exclude_images)
  results = recompute.write_tables(out, cv.compute_all, markdown_of(out))
  plot_rocs(out)
  return results


def parse_expected(text: str) -> list[tuple[int, int]]:
  """``"0:0,1:0"`` (fold:seed pairs) -> [(0, 0), (1, 0)]."""
  return [tuple(int(x) for x in pair.split(":")) for pair in text.split(",")
          if pair]


def main(argv=None) -> int:
  parser = commands.report_parser(__doc__, "fold run workdirs",
                                  "--expected-runs",
                                  "fold:seed pairs the CV was meant to have")
  return commands.main(
      parser, argv, cv.compute_all, markdown_of,
      lambda args: write_report(args.runs, args.out,
                                parse_expected(args.expected_runs),
                                near_copy_choice(args), args.comparisons),
      "fold run workdirs")


if __name__ == "__main__":
  with errors.one_line_errors():
    sys.exit(main())
