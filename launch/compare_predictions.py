"""Compare classifiers on any labelled image set from their prediction CSVs.

    python launch/compare_predictions.py --labels labels.csv PRED1.csv PRED2.csv
    python launch/compare_predictions.py --labels \\
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
same numbers. Bad input stops with one line naming the file at fault.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rapool_jax import errors  # noqa: E402
from rapool_jax import stats  # noqa: E402

ID_COLUMNS = ("image", "image_id")


def _read_column(path: str, column: str) -> dict[str, str]:
  """{image id: the row's ``column``} of a CSV with an image id column."""
  if not os.path.isfile(path):
    raise errors.UserError(f"{path}: no such file")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    id_col = next((c for c in ID_COLUMNS if c in header), None)
    if id_col is None or column not in header:
      raise errors.UserError(
          f"{path}: needs the columns image (or image_id) and {column}, has "
          f"{', '.join(header) or 'none'}")
    out = {}
    for line, row in enumerate(reader, start=2):
      if row[id_col] in out:
        raise errors.UserError(f"{path}: line {line}: image {row[id_col]} "
                               "appears twice")
      out[row[id_col]] = row[column]
  if not out:
    raise errors.UserError(f"{path}: no rows")
  return out


def _numbers(path: str, column: str, values: dict[str, str]) -> dict:
  out = {}
  for image, text in values.items():
    try:
      out[image] = float(text)
    except (TypeError, ValueError):
      out[image] = math.nan
    if not math.isfinite(out[image]):
      raise errors.UserError(f"{path}: image {image}: {column}={text!r} is "
                             "not a finite number")
  return out


def read_labels(path: str, column: str) -> tuple[list[str], np.ndarray]:
  """(sorted image ids, 0/1 labels [N]) of a labels CSV."""
  values = _numbers(path, column, _read_column(path, column))
  bad = [f"{i}={v:g}" for i, v in values.items() if v not in (0.0, 1.0)]
  if bad:
    raise errors.UserError(f"{path}: {column} must be 0 or 1, got "
                           f"{', '.join(bad[:5])}")
  images = sorted(values)
  labels = np.array([int(values[i]) for i in images])
  if min(labels.sum(), labels.size - labels.sum()) < 2:
    raise errors.UserError(
        f"{path}: {labels.sum()} image(s) with {column}=1 and "
        f"{labels.size - labels.sum()} with 0; DeLong's CI needs at least 2 "
        "of each")
  return images, labels


def _ids(ids, limit: int = 5) -> str:
  ids = sorted(ids)
  more = f", ... ({len(ids)} in all)" if len(ids) > limit else ""
  return ", ".join(ids[:limit]) + more


def read_scores(path: str, column: str, images: list[str],
                labels_path: str) -> np.ndarray:
  """Scores [N] of a prediction CSV, in the order of ``images``."""
  values = _numbers(path, column, _read_column(path, column))
  missing, extra = set(images) - set(values), set(values) - set(images)
  if missing or extra:
    what = ([f"missing {len(missing)} image(s) of {labels_path} "
             f"({_ids(missing)})"] if missing else []) + (
                 [f"{len(extra)} image(s) not in {labels_path} "
                  f"({_ids(extra)})"] if extra else [])
    raise errors.UserError(f"{path}: {'; '.join(what)}")
  return np.array([values[i] for i in images])


def parse_models(specs: list[str]) -> list[tuple[str, list[str]]]:
  """``PATH`` or ``NAME=PATH[,PATH...]`` -> [(name, paths)]. A bare PATH is
  named by its file stem, or by the path itself where stems collide."""
  stems = [Path(s).stem for s in specs if "=" not in s]
  models = []
  for spec in specs:
    name, sep, paths = spec.partition("=")
    if not sep:
      stem = Path(spec).stem
      name, paths = (stem if stems.count(stem) == 1 else spec), spec
    models.append((name, [p for p in paths.split(",") if p]))
  names = [n for n, _ in models]
  for name, paths in models:
    if not paths or names.count(name) > 1:
      raise errors.UserError(f"model {name!r}: give NAME=PATH[,PATH...] with "
                             "a name used once")
  return models


def compare(labels: np.ndarray, scores: dict[str, np.ndarray],
            n_resamples: int = 2000, seed: int = 0) -> dict:
  """Per-model AUC with DeLong CI, every pair's DeLong and bootstrap diffs."""
  models = [{"name": n, **stats.auc_ci(labels, s)} for n, s in scores.items()]
  pairs = []
  for a, b in itertools.combinations(scores, 2):
    boot = stats.paired_bootstrap_auc_diff(labels, scores[a], scores[b],
                                           n_resamples=n_resamples, seed=seed)
    pairs.append({"a": a, "b": b,
                  **stats.paired_delong(labels, scores[a], scores[b]),
                  "boot_lo": boot["lo"], "boot_hi": boot["hi"]})
  return {"num_images": int(labels.size), "num_positives": int(labels.sum()),
          "models": models, "comparisons": pairs, "n_resamples": n_resamples,
          "seed": seed}


def _p(p: float) -> str:
  return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def markdown(result: dict, labels_path: str, column: str) -> str:
  lines = [f"{labels_path}: {result['num_images']} images, "
           f"{result['num_positives']} with {column}=1", "",
           "| model | files | AUC [95% DeLong CI] |", "|---|---|---|"]
  for m in result["models"]:
    lines.append(f"| {m['name']} | {len(m['files'])} | {m['auc']:.3f} "
                 f"[{m['lo']:.3f}, {m['hi']:.3f}] |")
  if result["comparisons"]:
    lines += ["", "Paired AUC differences (a - b), same images: DeLong 95% CI "
              "and p; stratified paired bootstrap 95% CI "
              f"({result['n_resamples']} resamples, seed {result['seed']}).",
              "", "| a - b | ΔAUC | DeLong 95% CI | p | bootstrap 95% CI |",
              "|---|---|---|---|---|"]
  for c in result["comparisons"]:
    lines.append(f"| {c['a']} - {c['b']} | {c['diff']:+.3f} | "
                 f"[{c['lo']:+.3f}, {c['hi']:+.3f}] | {_p(c['p'])} | "
                 f"[{c['boot_lo']:+.3f}, {c['boot_hi']:+.3f}] |")
  return "\n".join(lines)


def run(args) -> dict:
  images, labels = read_labels(args.labels, args.column)
  scores, files = {}, {}
  for name, paths in parse_models(args.predictions):
    # Several CSVs of one model (seeds): one mean score per image.
    scores[name] = np.mean([read_scores(p, args.score_column or args.column,
                                        images, args.labels)
                            for p in paths], axis=0)
    files[name] = paths
    if np.array_equal(scores[name], labels):
      # e.g. a run's own CSV read without --score-column: its label column.
      raise errors.UserError(
          f"model {name!r}: its scores are the labels themselves (column "
          f"{args.score_column or args.column!r} of {paths[0]}); name the "
          "score column with --score-column")
  result = compare(labels, scores, args.n_resamples, args.seed)
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
