"""Compare classifiers on any labelled image set from their prediction CSVs.

    python -m launch.compare_predictions --labels labels.csv PRED1.csv PRED2.csv
    python -m launch.compare_predictions --labels \\
        ISIC-2017_Test_v2_Part3_GroundTruth.csv \\
        gap=gap_seed0.csv,gap_seed1.csv rap=rap_seed0.csv,rap_seed1.csv \\
        --json compare.json

``labels.csv`` has the columns ``image,melanoma`` (0/1); the official ISIC 2017
Part 3 ground truth (``image_id,melanoma,seborrheic_keratosis``) also works.
Each prediction CSV is what ``python -m rapool_jax.predict --out`` writes
(``image,melanoma[,seborrheic_keratosis]``); the per-image CSVs a run writes
itself (``WORKDIR/predictions/SPLIT/STAGE.csv``, ``image,label,score``) serve
as labels and predictions with ``--column label --score-column score``.
``NAME=A.csv,B.csv`` names a
model and averages its CSVs' scores per image (e.g. several seeds) before any
test. Every CSV must score exactly the labelled images.

Prints each model's AUC with its 95% DeLong CI and every paired difference
(a - b on the same images): DeLong CI and p, and a stratified (positives and
negatives resampled separately) paired bootstrap CI; ``--json`` writes the
same numbers. Bad input stops with one line naming the file at fault. The
work is done by ``rapool_jax/analysis/`` (``prediction_csvs``, ``paired``).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pandas as pd

from rapool_jax import errors
from rapool_jax.analysis import paired
from rapool_jax.analysis import prediction_csvs
from rapool_jax.analysis import tables

parse_models = prediction_csvs.parse_models


def markdown(result: dict, labels_path: str, column: str) -> str:
  """The models' AUCs and, with two or more, their paired differences."""
  models = pd.DataFrame(
      [[m["name"], len(m["files"]), f"{m['auc']:.3f} [{m['lo']:.3f}, "
        f"{m['hi']:.3f}]"] for m in result["models"]],
      columns=["model", "files", "AUC [95% DeLong CI]"])
  lines = [f"{labels_path}: {result['num_images']} images, "
           f"{result['num_positives']} with {column}=1", ""]
  lines += tables.markdown_table(models)
  if result["comparisons"]:
    lines += ["", "Paired AUC differences (a - b), same images: DeLong 95% CI "
              "and p; stratified paired bootstrap 95% CI "
              f"({result['n_resamples']} resamples, seed {result['seed']}).",
              ""] + tables.markdown_table(pd.DataFrame(
                  [[f"{c['a']} - {c['b']}", f"{c['diff']:+.3f}", tables.ci(c),
                    tables.pval(c["p"]), tables.ci(c, "boot_lo", "boot_hi")]
                   for c in result["comparisons"]],
                  columns=["a - b", "ΔAUC", "DeLong 95% CI", "p",
                           "bootstrap 95% CI"]))
  return "\n".join(lines)


def run(args) -> dict:
  images, labels = prediction_csvs.read_labels(args.labels, args.column)
  scores, files = {}, {}
  for name, paths in prediction_csvs.parse_models(args.predictions):
    # Several CSVs of one model (seeds): one mean score per image.
    scores[name] = np.mean([prediction_csvs.read_scores(p, args.score_column or args.column,
                                        images, args.labels)
                            for p in paths], axis=0)
    files[name] = paths
    if np.array_equal(scores[name], labels):
      # e.g. a run's own CSV read without --score-column: its label column.
      raise errors.UserError(
          f"model {name!r}: its scores are the labels themselves (column "
          f"{args.score_column or args.column!r} of {paths[0]}); name the "
          "score column with --score-column")
  result = paired.compare_models(labels, scores, args.n_resamples, args.seed)
  for m in result["models"]:
    m["files"] = files[m["name"]]
  result.update(labels=args.labels, column=args.column)
  print(markdown(result, args.labels, args.column), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
    print(f"wrote {args.json}", file=sys.stderr)
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--labels", required=True,
                      help="CSV with image (or image_id) and the label column")
  parser.add_argument("predictions", nargs="+",
                      help="prediction CSVs: PATH or NAME=PATH[,PATH...]")
  parser.add_argument("--column", default="melanoma",
                      help="label and score column (seborrheic_keratosis for "
                      "the other ISIC task)")
  parser.add_argument("--score-column", default="",
                      help="score column of the prediction CSVs, when it is "
                      "not --column (a run's own WORKDIR/predictions/SPLIT/"
                      "STAGE.csv: --column label --score-column score)")
  parser.add_argument("--json", default="", help="also write the numbers here")
  parser.add_argument("--n-resamples", type=int, default=2000)
  parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
  args = parser.parse_args(argv)
  with errors.one_line_errors():
    run(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
