"""The out-of-fold and test-split tables of a cross-validation (``launch/crossval.py``).

    python launch/crossval_report.py RUN_DIR [RUN_DIR ...] --out OUT
        [--expected-runs 0:0,1:0,...]
        [--exclude-images FILE | --near-copies-from RUN_DIR [--data-root DIR]]
    python launch/crossval_report.py --rebuild OUT
    python launch/crossval_report.py --check OUT

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
arm, and on an image scored other than once per seed. ``--rebuild OUT``
rewrites the tables from the CSVs.
"""

from __future__ import annotations

import argparse
import collections
import csv
import itertools
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
from scipy import optimize

if __package__ in (None, ""):
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rapool_jax import metrics  # noqa: E402
from rapool_jax import stats  # noqa: E402

SPECIFICITIES = (0.884, 0.923)  # the paper's RankOpt and softmax operating points
# Two sensitivities are a verdict only at equal specificity: above this gap
# in the specificities actually reached, no McNemar p is printed.
MATCH_TOLERANCE = 0.01
N_RESAMPLES = 2000
# The issue's target for the primary out-of-fold difference: a 95% CI of
# +-0.017 (about 0.7 x the paper's claimed RAP - GAP gain of 0.024).
HALF_WIDTH_TARGET = 0.017
CONTROL = "gap_control"
KEYS = ("image", "label", "fold", "seed")
TEST_KEYS = ("image", "label", "seed", "fold")
TEST_SPLIT = "test"
# (name, arm a, arm b, question): the paired comparisons that answer the
# paper's claims; a comparison whose arms a run lacks is left out.
COMPARISONS = (
    ("RAP vs GAP control (primary)", "rap_lambda_7.5", CONTROL,
     "Does region pooling beat GAP trained as long?"),
    ("RAP vs Step 2", "rap_lambda_7.5", "step_2_gap",
     "Does Step 4 keep (or raise) Step 2's AUC?"),
    ("RAP vs GAP + seg loss", "rap_lambda_7.5", "gap_seg_loss_lambda_7.5",
     "Is the gain the pooling, given the same segmentation loss?"),
    ("GAP control vs Step 2", CONTROL, "step_2_gap",
     "What do the extra steps alone give?"),
    ("RAP lambda 1 vs 7.5", "rap_lambda_1", "rap_lambda_7.5", "lambda"),
    ("RAP lambda 0.1 vs 7.5", "rap_lambda_0.1", "rap_lambda_7.5", "lambda"),
    ("RAP normalized vs RAP", "rap_normalized_lambda_7.5", "rap_lambda_7.5",
     "Eq. 1 divides by WH, not by the lesion area"),
    ("mask oracle vs RAP", "mask_oracle_lambda_7.5", "rap_lambda_7.5",
     "How much would a perfect lesion map add?"),
    ("RankOpt vs RAP softmax", "rap_rankopt", "rap_lambda_7.5",
     "Does RankOpt raise AUC on the same features?"),
    ("RankOpt vs logistic regression", "rap_rankopt",
     "rap_logistic_regression", "RankOpt against a plain linear baseline"),
)
# Table 3 of the paper: classifiers on the same RAP features (ISIC 2017 test).
TABLE3_ARMS = (("RAP softmax", "rap_lambda_7.5"),
               ("RAP + RankOpt", "rap_rankopt"),
               ("RAP + logistic regression (balanced)", "rap_logistic_regression"))
PAPER_TABLE3 = {"rap_lambda_7.5": (0.444, 0.923, 0.833, 0.838),
                "rap_rankopt": (0.607, 0.884, 0.833, 0.842)}
SENSITIVITY_COMPARISONS = (
    ("RankOpt vs RAP softmax", "rap_rankopt", "rap_lambda_7.5"),
    ("RankOpt vs logistic regression", "rap_rankopt",
     "rap_logistic_regression"),
    ("RAP vs GAP control", "rap_lambda_7.5", CONTROL),
)


# ----------------------------------------------------------------------------
# Collecting the fold runs' predictions.


def read_predictions(path: str) -> dict:
  """``image -> row`` of a ``predictions/<split>/<arm>.csv``."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  out = {r["image"]: r for r in rows}
  if len(out) != len(rows):
    raise ValueError(f"{path}: an image appears more than once")
  return out


def run_arms(run_dir: str) -> list[str]:
  """Arm names (file stems) in the order of the run's results rows."""
  from rapool_jax import evaluate  # pylint: disable=g-import-not-at-top
  with open(os.path.join(run_dir, "results.json")) as f:
    return [evaluate.row_slug(r["model"]) for r in json.load(f)["rows"]]


def run_config(run_dir: str) -> dict:
  with open(os.path.join(run_dir, "config.json")) as f:
    return json.load(f)


def score_rows(run: str, split: str, arms, key: dict, column="score"):
  """One row per image of ``predictions/<split>``: ``key``, label, each arm's
  ``column``."""
  preds = {a: read_predictions(os.path.join(run, "predictions", split,
                                            a + ".csv")) for a in arms}
  images = sorted(preds[arms[0]])
  for a in arms:
    if sorted(preds[a]) != images:
      raise ValueError(f"{run}/predictions/{split}: {a}.csv scores other "
                       f"images than {arms[0]}.csv")
  return [{"image": i, "label": int(preds[arms[0]][i]["label"]), **key,
           **{a: (float(preds[a][i][column]) if column == "score"
                  else preds[a][i].get(column, "")) for a in arms}}
          for i in images]


def _thresholds(run: str, split: str, arms, key: dict) -> list[dict]:
  rows = []
  for a in arms:
    val = read_predictions(os.path.join(run, "predictions", split, a + ".csv"))
    labels = np.array([int(r["label"]) for r in val.values()])
    scores = np.array([float(r["score"]) for r in val.values()])
    rows.append({**key, "arm": a, **{
        f"threshold_spe{spe}": metrics.threshold_at_specificity(
            labels, scores, spe) for spe in SPECIFICITIES}})
  return rows


def collect(run_dirs) -> dict:
  """Rows of every CSV (``oof``, ``jaccard``, ``thresholds``, ``test``) and
  the ``arms`` of the fold runs, in (fold, seed) order whatever the runs'
  folder names (``fold<F>_seed<S>/`` or a population's ``member<p>/``)."""
  tables = collections.defaultdict(list)
  arms, test_arms, with_test = None, None, set()
  configs = {run: run_config(run) for run in run_dirs}
  keys = {run: {"fold": c["data"]["crossval"]["fold"], "seed": c["seed"]}
          for run, c in configs.items()}
  for run in sorted(run_dirs, key=lambda r: (keys[r]["fold"],
                                             keys[r]["seed"], r)):
    config, key = configs[run], keys[run]
    if arms is None:
      arms = run_arms(run)
    elif run_arms(run) != arms:
      raise ValueError(f"{run}: arms {run_arms(run)} differ from {arms}")
    split = config["data"]["eval_split"]
    tables["oof"] += score_rows(run, split, arms, key)
    tables["jaccard"] += score_rows(run, split, arms, key, "jaccard")
    tables["thresholds"] += _thresholds(run, config["data"]["val_split"],
                                        arms, key)
    test_dir = os.path.join(run, "predictions", TEST_SPLIT)
    if os.path.isdir(test_dir):
      with_test.add(run)
      # An arm pooling over the true mask scores no image without one.
      present = [a for a in arms
                 if os.path.exists(os.path.join(test_dir, a + ".csv"))]
      if test_arms is not None and present != test_arms:
        raise ValueError(f"{test_dir}: arms {present} differ from the other "
                         f"runs' {test_arms}")
      test_arms = present
      tables["test"] += score_rows(run, TEST_SPLIT, test_arms, key)
  if with_test and len(with_test) != len(run_dirs):
    missing = sorted(set(run_dirs) - with_test)
    raise ValueError(f"{missing[0]}: no predictions/{TEST_SPLIT}/, which "
                     f"{len(with_test)} other runs have")
  # No test split: an empty table, no arms.
  return {"test": [], **tables, "arms": arms, "test_arms": test_arms or []}


def write_csv(path: str, rows: list[dict], columns) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(columns))
    w.writeheader()
    for r in rows:
      w.writerow({k: (repr(v) if isinstance(v, float) else v)
                  for k, v in r.items()})


def load_csv(path: str) -> list[dict]:
  if not os.path.exists(path):
    raise ValueError(f"{path}: missing")
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def read_image_list(path: str) -> list[str]:
  """Image ids of FILE: a CSV with an ``image`` column, or one id a line."""
  with open(path, newline="") as f:
    lines = [ln.strip() for ln in f if ln.strip()]
  if lines and lines[0].split(",")[0] == "image":
    return sorted({r["image"] for r in load_csv(path)})
  return sorted(set(lines))


def near_copy_rows(test, reference, threshold: float) -> list[dict]:
  """``{image, reference}`` for each image of ``test`` with a near-copy in
  ``reference`` (``pipeline.Split``s): ``folds.near_copies``' screen, 24 px
  grayscale correlation ``>= threshold``."""
  from rapool_jax.data import folds  # pylint: disable=g-import-not-at-top
  hit = folds.near_copies(test.images, reference.images, threshold)
  return [{"image": str(i), "reference": str(reference.ids[h])}
          for i, h in zip(test.ids, hit) if h >= 0]


def near_copies_of_run(run_dir: str, root: str = "") -> list[dict]:
  """The test images of RUN_DIR's data with a near-copy in the splits the
  run trained and validated on (``crossval.source_splits``), at the run's
  ``crossval.near_duplicate_threshold``. Relative data paths in its
  config.json start at ``root`` (default: here). Loads the data (TFDS)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from rapool_jax.data import folds  # pylint: disable=g-import-not-at-top
  from rapool_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  data = ml_collections.ConfigDict(run_config(run_dir)["data"])
  for key in ("data_dir", "manual_dir"):
    if data[key] and root:
      data[key] = os.path.join(root, data[key])
  builder = pipeline.make_builder(data, require_train_masks=False)
  load = lambda name: pipeline.load_split(builder, name, data.task)  # noqa: E731
  reference = folds.concat([load(n) for n in data.crossval.source_splits])
  return near_copy_rows(load(TEST_SPLIT), reference,
                        folds.near_duplicate_threshold(data.crossval))


def write_near_copies(out: str, exclude) -> None:
  """OUT/test_near_copies.csv from a file of image ids (``exclude`` a path)
  or ``near_copy_rows``; removed when ``exclude`` is empty."""
  path = os.path.join(out, "test_near_copies.csv")
  if os.path.exists(path):
    os.remove(path)  # never a stale list from an earlier report
  if isinstance(exclude, str) and exclude:
    exclude = [{"image": i} for i in read_image_list(exclude)]
  if exclude:
    write_csv(path, exclude, list(exclude[0]))


def score_columns(rows: list[dict], keys, path: str) -> dict:
  """CSV rows -> numpy columns: ints for the keys but ``image``, floats for
  the arms (NaN where empty)."""
  if not rows:
    raise ValueError(f"{path}: no rows")
  out = {k: np.array([r[k] for r in rows]) for k in rows[0]}
  for k in keys:
    if k not in out:
      raise ValueError(f"{path}: no column {k!r}")
    if k != "image":
      out[k] = out[k].astype(int)
  for a in (c for c in rows[0] if c not in keys):
    out[a] = np.array([float(v) if v not in ("", None) else math.nan
                       for v in out[a]])
  return out


def arms_of(columns: dict, keys) -> list[str]:
  return [c for c in columns if c not in keys]


# ----------------------------------------------------------------------------
# Reading OUT back, and what must hold of its CSVs.


def read_tables(out: str) -> dict:
  """OUT's CSVs as numpy columns (``oof``, ``jaccard``, ``test`` or None),
  ``thresholds`` by (fold, seed, arm), ``runs`` rows, ``near_copies``."""
  p = lambda name: os.path.join(out, name)  # noqa: E731
  t = {"oof": score_columns(load_csv(p("oof_scores.csv")), KEYS,
                            p("oof_scores.csv")),
       "jaccard": score_columns(load_csv(p("oof_jaccard.csv")), KEYS,
                                p("oof_jaccard.csv")),
       "thresholds": load_csv(p("thresholds.csv")),
       "runs": [{k: int(v) for k, v in r.items()}
                for r in load_csv(p("runs.csv"))],
       "test": None, "near_copies": None}
  t["arms"] = arms_of(t["oof"], KEYS)
  if os.path.exists(p("test_scores.csv")):
    t["test"] = score_columns(load_csv(p("test_scores.csv")), TEST_KEYS,
                              p("test_scores.csv"))
  if os.path.exists(p("test_near_copies.csv")):
    t["near_copies"] = read_image_list(p("test_near_copies.csv"))
  return t


def duplicates(columns: dict, keys, name: str) -> list[str]:
  """A line per key tuple (e.g. image and seed) appearing more than once."""
  seen = collections.Counter(zip(*(columns[k].tolist() for k in keys)))
  return [f"{name}: {dict(zip(keys, k))} appears {n} times"
          for k, n in sorted(seen.items()) if n > 1]


def same_images_per_group(columns, group_keys, name: str) -> list[str]:
  """Within ``group_keys[:-1]`` (e.g. fold), every value of the last key
  (seed) scores the same images with the same labels."""
  *outer, inner = group_keys
  sets = collections.defaultdict(dict)
  for i, image in enumerate(columns["image"]):
    g = tuple(int(columns[k][i]) for k in outer)
    sets[g].setdefault(int(columns[inner][i]), {})[image] = int(
        columns["label"][i])
  problems = []
  for g, by_inner in sorted(sets.items()):
    (first, ref), *rest = sorted(by_inner.items())
    for value, images in rest:
      for image in sorted(set(ref) ^ set(images)):
        where = first if image in ref else value
        problems.append(f"{name}: {image} ({dict(zip(outer, g))}) is scored "
                        f"in {inner} {where} but not in every {inner}")
      problems += [f"{name}: {image} has label {ref[image]} in {inner} "
                   f"{first} but {images[image]} in {inner} {value}"
                   for image in sorted(set(ref) & set(images))
                   if ref[image] != images[image]]
  return problems


def validate(t: dict) -> list[str]:
  """Everything that must hold of OUT's CSVs before a figure is computed."""
  oof, arms = t["oof"], t["arms"]
  problems = duplicates(oof, ("image", "seed"), "oof_scores.csv")
  problems += same_images_per_group(oof, ("fold", "seed"), "oof_scores.csv")
  folds = collections.defaultdict(set)
  for image, fold in zip(oof["image"], oof["fold"]):
    folds[image].add(int(fold))
  problems += [f"oof_scores.csv: {i} is in folds {sorted(f)}"
               for i, f in sorted(folds.items()) if len(f) > 1]
  jac = t["jaccard"]
  if arms_of(jac, KEYS) != arms:
    problems.append(f"oof_jaccard.csv: arms {arms_of(jac, KEYS)} differ from "
                    f"oof_scores.csv's {arms}")
  if any(not np.array_equal(jac[k], oof[k]) for k in KEYS):
    problems.append("oof_jaccard.csv: its image/label/fold/seed rows differ "
                    "from oof_scores.csv's")
  finished = {(r["fold"], r["seed"]) for r in t["runs"] if r["finished"]}
  scored = set(zip(oof["fold"].tolist(), oof["seed"].tolist()))
  problems += [f"oof_scores.csv: fold {f} seed {s} "
               + ("has rows but runs.csv does not list it as finished"
                  if (f, s) in scored else "is finished in runs.csv but "
                  "has no rows") for f, s in sorted(scored ^ finished)]
  want = sorted((f, s, a) for f, s in finished for a in arms)
  have = sorted((int(r["fold"]), int(r["seed"]), r["arm"])
                for r in t["thresholds"])
  if have != want:
    problems.append(f"thresholds.csv: rows {sorted(set(have) ^ set(want))[:4]}"
                    " are missing or extra (one per finished fold, seed, arm)"
                    if set(have) != set(want) else
                    "thresholds.csv: a (fold, seed, arm) appears twice")
  return problems + validate_test(t, finished)


def validate_test(t: dict, finished: set) -> list[str]:
  test = t["test"]
  if test is None:
    return (["test_near_copies.csv without test_scores.csv"]
            if t["near_copies"] is not None else [])
  problems = duplicates(test, ("image", "seed", "fold"), "test_scores.csv")
  test_arms = arms_of(test, TEST_KEYS)
  if not test_arms or [a for a in t["arms"] if a in test_arms] != test_arms:
    problems.append(f"test_scores.csv: arms {test_arms} are not among "
                    f"oof_scores.csv's {t['arms']}")
  images = collections.defaultdict(set)
  for image, f, s in zip(test["image"], test["fold"], test["seed"]):
    images[(int(f), int(s))].add(image)
  union = set(test["image"])
  problems += [f"test_scores.csv: fold {f} seed {s} did not score {i}"
               for (f, s), have in sorted(images.items())
               for i in sorted(union - have)]
  labels = collections.defaultdict(set)
  for image, label in zip(test["image"], test["label"]):
    labels[image].add(int(label))
  problems += [f"test_scores.csv: {i} has labels {sorted(v)}"
               for i, v in sorted(labels.items()) if len(v) > 1]
  scored = set(zip(test["fold"].tolist(), test["seed"].tolist()))
  problems += [f"test_scores.csv: fold {f} seed {s} is finished in runs.csv "
               "but scored no test image" for f, s in sorted(finished - scored)]
  problems += [f"test_scores.csv: fold {f} seed {s} is not a finished run"
               for f, s in sorted(scored - finished)]
  if t["near_copies"] is not None:
    problems += [f"test_near_copies.csv: {i} is not a test image"
                 for i in sorted(set(t["near_copies"]) - set(test["image"]))]
  return problems


# ----------------------------------------------------------------------------
# The statistics (pure functions of the CSVs).


def mean_sd(values) -> dict:
  """Mean and SD (ddof 1; None for one value) of per-seed figures."""
  v = np.asarray(values, float)
  return {"mean": float(v.mean()),
          "sd": float(v.std(ddof=1)) if v.size > 1 else None}


def paired_auc(y, a, b, strata=None, seed: int = 0) -> dict:
  """auc(a) - auc(b) on the same images [N]: DeLong CI and p, and a paired
  bootstrap CI resampling positives and negatives apart; with ``strata``
  [N] (each image's fold) both are fold-stratified, so that no (positive,
  negative) pair scored by two different fold models enters."""
  if strata is None:
    d = stats.paired_delong(y, a, b)
    out = {}
  else:
    d = stats.stratified_delong(y, a, b, strata)
    out = {"fold_diffs": [r["diff"] for r in d["strata"]]}
  boot = stats.paired_bootstrap_auc_diff(y, a, b, n_resamples=N_RESAMPLES,
                                         seed=seed, strata=strata)
  return {**{k: d[k] for k in ("auc_a", "auc_b", "diff", "se", "lo", "hi",
                               "p")},
          **out, "boot_lo": boot["lo"], "boot_hi": boot["hi"]}


def matched_sensitivity(y, a, b, threshold_a, threshold_b) -> dict:
  """Sensitivities of two arms at thresholds ``[N]`` (or floats) set
  elsewhere; the McNemar p only when the specificities reached differ by at
  most ``MATCH_TOLERANCE``, else ``p`` is None and ``why`` says so."""
  s = stats.paired_sensitivity(y, a, b, threshold_a, threshold_b,
                               max_specificity_gap=MATCH_TOLERANCE)
  why = None if s["matched"] else (
      f"not compared: Spe differs by {abs(s['specificity_gap']):.3f} > "
      f"{MATCH_TOLERANCE}")
  return {k: s[k] for k in ("sens_a", "sens_b", "spe_a", "spe_b", "b", "c",
                            "p")} | {"why": why}


def per_fold_thresholds(y, s, folds, spe: float) -> np.ndarray:
  """``[N]``: each image's threshold reaching ``spe`` on its own fold's
  negatives (a point of each fold model's ROC curve)."""
  out = np.empty(len(y))
  for f in np.unique(folds):
    k = folds == f
    out[k] = metrics.threshold_at_specificity(y[k], s[k], spe)
  return out


def predicted_positive(oof, thresholds, arm: str, spe: float) -> np.ndarray:
  """``[N]`` bool: score >= its own fold's validation threshold for ``spe``."""
  return oof[arm] >= fold_thresholds(oof, thresholds, arm, spe)


def fold_thresholds(oof, thresholds, arm: str, spe: float) -> np.ndarray:
  by_key = {(int(r["fold"]), int(r["seed"]), r["arm"]):
            float(r[f"threshold_spe{spe}"]) for r in thresholds}
  return np.array([by_key[(f, s, arm)]
                   for f, s in zip(oof["fold"], oof["seed"])])


def arm_row(o, jac, thresholds, a: str) -> dict:
  """One arm of one seed: pooled AUC [CI], fold mean, validation-threshold
  operating points, JA."""
  y = o["label"]
  row = {"arm": a, **stats.auc_ci(y, o[a])}
  row["auc_fold_mean"] = float(np.mean(
      [metrics.roc_auc(y[o["fold"] == f], o[a][o["fold"] == f])
       for f in sorted(set(o["fold"]))]))
  for spe in SPECIFICITIES:
    pred = predicted_positive(o, thresholds, a, spe)
    row[f"at_spe{spe}"] = {
        "sensitivity": float(pred[y == 1].mean()),
        "specificity": float(1 - pred[y == 0].mean()),
        "accuracy": float((pred == (y == 1)).mean())}
  row["jaccard"] = float(np.nanmean(jac[a])) if np.isfinite(jac[a]).any() \
      else None
  return row


def compute_seed(t: dict, seed: int) -> dict:
  """Results of one seed: per-arm rows, AUC comparisons (pooled), and
  sensitivities at the validation thresholds."""
  keep = t["oof"]["seed"] == seed
  o = {k: v[keep] for k, v in t["oof"].items()}
  jac = {a: t["jaccard"][a][keep] for a in t["arms"]}
  y, arms = o["label"], t["arms"]
  comparisons = [{"name": name, "a": a, "b": b, "question": question,
                  **stats.paired_delong(y, o[a], o[b]),
                  **_boot(y, o[a], o[b], seed)}
                 for name, a, b, question in COMPARISONS
                 if a in arms and b in arms]
  sens = []
  for name, a, b in SENSITIVITY_COMPARISONS:
    if a in arms and b in arms:
      for spe in SPECIFICITIES:
        sens.append({"name": name, "a": a, "b": b, "specificity": spe,
                     **matched_sensitivity(
                         y, o[a], o[b],
                         fold_thresholds(o, t["thresholds"], a, spe),
                         fold_thresholds(o, t["thresholds"], b, spe))})
  return {"seed": seed, "num_images": int(len(y)),
          "num_melanomas": int(y.sum()),
          "folds": sorted(map(int, set(o["fold"]))),
          "arms": [arm_row(o, jac, t["thresholds"], a) for a in arms],
          "comparisons": comparisons, "sensitivity": sens}


def _boot(y, a, b, seed):
  boot = stats.paired_bootstrap_auc_diff(y, a, b, n_resamples=N_RESAMPLES,
                                         seed=seed)
  return {"boot_lo": boot["lo"], "boot_hi": boot["hi"]}


def average_over(columns: dict, arms, by: str, over) -> dict:
  """Per ``by`` value (image): label, the mean of each arm over the rows
  (seeds, folds), ``over`` keys' first value, and the number of rows."""
  images, inverse = np.unique(columns[by], return_inverse=True)
  count = np.bincount(inverse)
  out = {by: images, "n": count}
  for k in ("label", *over):
    first = np.zeros(len(images), int)
    first[inverse[::-1]] = columns[k][::-1]
    out[k] = first
  for a in arms:
    out[a] = np.bincount(inverse, weights=columns[a]) / count
  return out


def seed_averaged(t: dict) -> dict:
  """The out-of-fold verdicts on each image's score averaged over seeds."""
  oof, arms = t["oof"], t["arms"]
  seeds = sorted(map(int, set(oof["seed"])))
  m = average_over(oof, arms, "image", ("fold",))
  y, folds = m["label"], m["fold"]
  rows = []
  for a in arms:
    per_seed = [metrics.roc_auc(oof["label"][oof["seed"] == s],
                                oof[a][oof["seed"] == s]) for s in seeds]
    rows.append({"arm": a, "auc_per_seed": per_seed,
                 "auc_seed_mean_sd": mean_sd(per_seed), **stats.auc_ci(y, m[a]),
                 "auc_fold_mean": float(np.mean(
                     [metrics.roc_auc(y[folds == f], m[a][folds == f])
                      for f in np.unique(folds)]))})
  comparisons = [{"name": name, "a": a, "b": b, "question": question,
                  "pooled": paired_auc(y, m[a], m[b]),
                  "stratified": paired_auc(y, m[a], m[b], strata=folds)}
                 for name, a, b, question in COMPARISONS
                 if a in arms and b in arms]
  sens = [{"name": name, "a": a, "b": b, "specificity": spe,
           **matched_sensitivity(y, m[a], m[b],
                                 per_fold_thresholds(y, m[a], folds, spe),
                                 per_fold_thresholds(y, m[b], folds, spe))}
          for name, a, b in SENSITIVITY_COMPARISONS if a in arms and b in arms
          for spe in SPECIFICITIES]
  return {"seeds": seeds, "num_images": int(len(y)),
          "num_melanomas": int(y.sum()),
          "scores_per_image": sorted(set(m["n"].tolist())),
          "arms": rows, "comparisons": comparisons, "sensitivity": sens}


def test_split(t: dict) -> dict:
  """Test-split verdicts: each arm's score of an image is the mean over its
  fold and seed models; with and without the near-copy images."""
  test = t["test"]
  arms = arms_of(test, TEST_KEYS)
  seeds = sorted(map(int, set(test["seed"])))
  m = average_over(test, arms, "image", ())
  by_seed = {s: average_over({k: v[test["seed"] == s] for k, v in test.items()},
                             arms, "image", ()) for s in seeds}
  near = set(t["near_copies"] or ())
  keep = ~np.isin(m["image"], sorted(near))
  y = m["label"]
  rows = [{"arm": a, "auc_per_seed": [metrics.roc_auc(by_seed[s]["label"],
                                                      by_seed[s][a])
                                      for s in seeds],
           **stats.auc_ci(y, m[a]),
           "without_near_copies": (stats.auc_ci(y[keep], m[a][keep])
                                   if near else None)} for a in arms]
  for r in rows:
    r["auc_seed_mean_sd"] = mean_sd(r["auc_per_seed"])
  comparisons = [{"name": name, "a": a, "b": b, "question": question,
                  "all": paired_auc(y, m[a], m[b]),
                  "without_near_copies": (paired_auc(y[keep], m[a][keep],
                                                     m[b][keep])
                                          if near else None)}
                 for name, a, b, question in COMPARISONS
                 if a in arms and b in arms]
  return {"seeds": seeds, "num_images": int(len(y)),
          "num_melanomas": int(y.sum()),
          "models_per_image": sorted(set(m["n"].tolist())),
          "near_copies": len(near),
          "near_copy_melanomas": int(y[~keep].sum()),
          "arms": rows, "comparisons": comparisons}


def se_by_seed_count(columns: dict, a: str, b: str, strata: str = "") -> dict:
  """SE of ``a - b`` (DeLong; fold-stratified with ``strata="fold"``) on each
  image's score averaged over k seeds, for each k (the mean over every
  k-subset of the seeds), and the fit SE²(k) = floor + model / k by
  non-negative least squares: ``floor`` is the image-sampling part no number
  of seeds removes, ``model`` the training noise that averaging divides. With
  the fit, the seeds that reach the ``HALF_WIDTH_TARGET`` (None: unreachable,
  the floor alone exceeds it)."""
  seeds = sorted(set(columns["seed"].tolist()))
  rows = []
  for k in range(1, len(seeds) + 1):
    ses = []
    for subset in itertools.combinations(seeds, k):
      keep = np.isin(columns["seed"], subset)
      m = average_over({c: v[keep] for c, v in columns.items()}, (a, b),
                       "image", (strata,) if strata else ())
      ses.append((stats.stratified_delong(m["label"], m[a], m[b], m[strata])
                  if strata else stats.paired_delong(m["label"], m[a], m[b])
                  )["se"])
    rows.append({"seeds": k, "subsets": len(ses), "se": float(np.mean(ses))})
  out = {"a": a, "b": b, "stratified": bool(strata), "by_seeds": rows,
         "target_half_width": HALF_WIDTH_TARGET, "fit": None}
  if len(rows) >= 2:
    k = np.array([r["seeds"] for r in rows], float)
    (floor, model), _ = optimize.nnls(np.stack([np.ones_like(k), 1 / k], 1),
                                      np.array([r["se"] for r in rows]) ** 2)
    target_var = (HALF_WIDTH_TARGET / 1.959964) ** 2
    out["fit"] = {
        "floor_se": float(np.sqrt(floor)), "model_se_one_seed":
        float(np.sqrt(model)),
        "seeds_for_target": (int(math.ceil(model / (target_var - floor)))
                             if target_var > floor else None)}
  return out


def power(t: dict) -> dict:
  """``se_by_seed_count`` of the primary comparison, out of fold
  (fold-stratified, the primary) and on the test split."""
  _, a, b, _ = COMPARISONS[0]
  if a not in t["arms"] or b not in t["arms"]:
    return {}
  out = {"out_of_fold": se_by_seed_count(t["oof"], a, b, strata="fold")}
  if t["test"] is not None and {a, b} <= set(arms_of(t["test"], TEST_KEYS)):
    out["test"] = se_by_seed_count(t["test"], a, b)
  return out


def runs_summary(runs: list[dict]) -> dict:
  missing = [[r["fold"], r["seed"]] for r in runs if not r["finished"]]
  return {"expected": len(runs), "finished": len(runs) - len(missing),
          "missing": missing,
          "folds": sorted({r["fold"] for r in runs}),
          "seeds": sorted({r["seed"] for r in runs})}


def compute_all(out: str) -> dict:
  """Every figure of results.json from OUT's CSVs (ValueError on bad CSVs)."""
  t = read_tables(out)
  problems = validate(t)
  if problems:
    raise ValueError("; ".join(problems))
  results = {"arms": t["arms"], "runs": runs_summary(t["runs"]),
             "match_tolerance": MATCH_TOLERANCE,
             "by_seed": [compute_seed(t, int(s))
                         for s in sorted(set(t["oof"]["seed"]))],
             "seed_averaged": seed_averaged(t)}
  if t["test"] is not None:
    results["test"] = test_split(t)
  results["power"] = power(t)
  # As results.json holds it (tuples as lists, no numpy scalars).
  return json.loads(json.dumps(results))


# ----------------------------------------------------------------------------
# Writing.


def _f(x, d=3):
  return "-" if x is None else f"{x:.{d}f}"


def _p(p):
  return "-" if p is None else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _ci(c, lo="lo", hi="hi"):
  return f"[{c[lo]:+.3f}, {c[hi]:+.3f}]"


def _msd(m):
  return _f(m["mean"]) + ("" if m["sd"] is None else f" ± {m['sd']:.3f}")


def partial_banner(runs: dict) -> list[str]:
  """The partial banner, when any expected fold run is missing."""
  if not runs["missing"]:
    return []
  missing = ", ".join(f"fold {f} seed {s}" for f, s in runs["missing"])
  return [f"**Partial: {runs['finished']} of {runs['expected']} fold runs "
          f"finished; missing: {missing}. Every figure below covers the "
          "finished runs only.**", ""]


def sensitivity_lines(rows, intro: str) -> list[str]:
  lines = ["", intro, "",
           "| comparison | target Spe | Sen a (Spe a) | Sen b (Spe b) | "
           "a only / b only | McNemar p |", "|---|---|---|---|---|---|"]
  for s in rows:
    lines.append(
        f"| {s['name']} | {s['specificity']} | {s['sens_a']:.3f} "
        f"({s['spe_a']:.3f}) | {s['sens_b']:.3f} ({s['spe_b']:.3f}) | "
        f"{s['b']} / {s['c']} | {s['why'] or _p(s['p'])} |")
  return lines


def seed_averaged_lines(r: dict) -> list[str]:
  lines = [
      f"## Out of fold, seed-averaged: seeds {r['seeds']}, {r['num_images']} "
      f"images, {r['num_melanomas']} melanomas", "",
      "Each image's score is the mean of its scores over the seeds (each by "
      "the fold model that never trained on it). AUC per seed: pooled "
      "out-of-fold AUC of each seed, mean ± SD over seeds; seed-averaged: "
      "AUC of the averaged scores, 95% DeLong CI; fold mean beside it.", "",
      "| arm | AUC per seed | mean ± SD | seed-averaged AUC [95% CI] | "
      "fold mean |", "|---|---|---|---|---|"]
  for a in r["arms"]:
    lines.append(
        f"| {a['arm']} | {' / '.join(_f(x) for x in a['auc_per_seed'])} | "
        f"{_msd(a['auc_seed_mean_sd'])} | {_f(a['auc'])} [{_f(a['lo'])}, "
        f"{_f(a['hi'])}] | {_f(a['auc_fold_mean'])} |")
  lines += [
      "", "Paired AUC differences (a - b) on the seed-averaged scores. "
      "**Fold-stratified is primary**: pooling the out-of-fold scores ranks "
      "images scored by different fold models against each other, so the "
      "pooled AUC mixes the fold models' calibrations with their ranking; "
      "the stratified difference uses (melanoma, non-melanoma) pairs within "
      "a fold only (per-fold DeLong differences weighted by P·Q, and a "
      "bootstrap resampling within folds). Pooled beside it. Bootstrap: "
      f"{N_RESAMPLES:,} resamples, positives and negatives apart.", "",
      "| comparison | fold-stratified ΔAUC | DeLong 95% CI | p | bootstrap "
      "95% CI | per-fold Δ | pooled ΔAUC | DeLong 95% CI | p | bootstrap "
      "95% CI |", "|---|---|---|---|---|---|---|---|---|---|"]
  for c in r["comparisons"]:
    s, p = c["stratified"], c["pooled"]
    lines.append(
        f"| {c['name']} | {s['diff']:+.3f} | {_ci(s)} | {_p(s['p'])} | "
        f"{_ci(s, 'boot_lo', 'boot_hi')} | "
        f"{' '.join(f'{d:+.3f}' for d in s['fold_diffs'])} | "
        f"{p['diff']:+.3f} | {_ci(p)} | {_p(p['p'])} | "
        f"{_ci(p, 'boot_lo', 'boot_hi')} |")
  return lines + sensitivity_lines(
      r["sensitivity"],
      "Sensitivity at matched specificity (seed-averaged scores): in each "
      "fold, each arm's threshold reaches the target specificity on that "
      "fold's held-out non-melanomas (a point of the two ROC curves, not a "
      "threshold for new data); paired on the melanomas, exact McNemar, "
      f"printed only when the specificities reached differ by <= "
      f"{MATCH_TOLERANCE}.")


def seed_lines(r: dict) -> list[str]:
  lines = [
      f"## Seed {r['seed']}: {r['num_images']} images, {r['num_melanomas']} "
      f"melanomas, folds {r['folds']}", "",
      "AUC: pooled out-of-fold, 95% DeLong CI; per-fold mean beside it. "
      "Sen/Spe: thresholds set on each fold's inner validation split at "
      "specificity 0.884 (0.923), applied to its held-out fold.", "",
      "| arm | AUC [95% CI] | fold mean | Sen @ 0.884 (Spe) | "
      "Sen @ 0.923 (Spe) | JA |", "|---|---|---|---|---|---|"]
  for a in r["arms"]:
    s1, s2 = a["at_spe0.884"], a["at_spe0.923"]
    lines.append(
        f"| {a['arm']} | {_f(a['auc'])} [{_f(a['lo'])}, {_f(a['hi'])}] | "
        f"{_f(a['auc_fold_mean'])} | {_f(s1['sensitivity'])} "
        f"({_f(s1['specificity'])}) | {_f(s2['sensitivity'])} "
        f"({_f(s2['specificity'])}) | {_f(a['jaccard'])} |")
  lines += ["", "Paired AUC differences (a - b), same images, pooled: DeLong "
            f"95% CI and p, stratified bootstrap 95% CI ({N_RESAMPLES:,} "
            "resamples).", "",
            "| comparison | ΔAUC | DeLong 95% CI | p | bootstrap 95% CI |",
            "|---|---|---|---|---|"]
  for c in r["comparisons"]:
    lines.append(f"| {c['name']} | {c['diff']:+.3f} | {_ci(c)} | {_p(c['p'])}"
                 f" | {_ci(c, 'boot_lo', 'boot_hi')} |")
  lines += sensitivity_lines(
      r["sensitivity"],
      "Sensitivity at the validation thresholds (each fold's inner "
      "validation split, target specificity 0.884 / 0.923), paired on the "
      "melanomas: exact McNemar, printed only when the specificities reached "
      f"on the held-out folds differ by <= {MATCH_TOLERANCE} (otherwise the "
      "sensitivities are not compared).")
  return lines + table3_lines(r)


def table3_lines(r: dict) -> list[str]:
  arms = {a["arm"]: a for a in r["arms"]}
  lines = ["", "Table 3 under this protocol: Sen / Spe / Acc at the "
           "threshold set for specificity 0.884 on each fold's inner "
           "validation split; the paper's test-set figures beside them "
           "(its softmax row is at its own threshold, Spe 0.923).", "",
           "| classifier | Sen | Spe | Acc | AUC | paper Sen / Spe / Acc / AUC |",
           "|---|---|---|---|---|---|"]
  for label, arm in TABLE3_ARMS:
    if arm in arms:
      a, paper = arms[arm], PAPER_TABLE3.get(arm)
      at = a["at_spe0.884"]
      lines.append(
          f"| {label} | {at['sensitivity']:.3f} | {at['specificity']:.3f} | "
          f"{at['accuracy']:.3f} | {a['auc']:.3f} | "
          + (" / ".join(f"{v:.3f}" for v in paper) if paper else "-") + " |")
  return lines


def auc_diff_cells(c) -> str:
  if c is None:
    return "- | - | - | -"
  return (f"{c['diff']:+.3f} | {_ci(c)} | {_p(c['p'])} | "
          f"{_ci(c, 'boot_lo', 'boot_hi')}")


def test_lines(r: dict, averaged_over: str) -> list[str]:
  near = r["near_copies"]
  lines = [
      f"## Test split: {r['num_images']} images, {r['num_melanomas']} "
      f"melanomas; seeds {r['seeds']}", "",
      f"Each arm's score of a test image is the mean over {averaged_over}. "
      f"{near} test images ({r['near_copy_melanomas']} melanomas) have a "
      "near-copy in train + validation"
      + ("" if near else " listed (no list was given)") + "; every verdict "
      "is given with all images and without those. AUC per seed: of that "
      "seed's averaged scores.", "",
      "| arm | AUC per seed | mean ± SD | seed-averaged AUC [95% CI] | "
      "without near-copies |", "|---|---|---|---|---|"]
  for a in r["arms"]:
    w = a["without_near_copies"]
    lines.append(
        f"| {a['arm']} | {' / '.join(_f(x) for x in a['auc_per_seed'])} | "
        f"{_msd(a['auc_seed_mean_sd'])} | {_f(a['auc'])} [{_f(a['lo'])}, "
        f"{_f(a['hi'])}] | "
        + ("-" if w is None else f"{_f(w['auc'])} [{_f(w['lo'])}, "
           f"{_f(w['hi'])}]") + " |")
  lines += ["", "Paired AUC differences (a - b) on the seed-averaged test "
            "scores: DeLong 95% CI and p, bootstrap 95% CI (positives and "
            "negatives resampled apart).", "",
            "| comparison | ΔAUC | DeLong 95% CI | p | bootstrap 95% CI | "
            "ΔAUC without near-copies | DeLong 95% CI | p | bootstrap 95% CI |",
            "|---|---|---|---|---|---|---|---|---|"]
  for c in r["comparisons"]:
    lines.append(f"| {c['name']} | {auc_diff_cells(c['all'])} | "
                 f"{auc_diff_cells(c['without_near_copies'])} |")
  return lines


def power_lines(p: dict) -> list[str]:
  if not p:
    return []
  first = p["out_of_fold"]
  lines = [f"## Power: SE of {first['a']} - {first['b']} by seeds averaged",
           "", "SE (DeLong) of the difference on scores averaged over k "
           "seeds, the mean over every k-subset of the seeds; the half-width "
           "of its 95% CI is 1.96 SE, the smallest difference found with 80% "
           "power 2.8 SE. Fit: SE²(k) = floor² + model² / k (non-negative "
           "least squares): the floor is image sampling, which more seeds do "
           "not remove.", "",
           "| where | " + " | ".join(f"k = {r['seeds']}" for r in
                                     first["by_seeds"]) + " | floor | model "
           f"(one seed) | seeds for ±{first['target_half_width']} |",
           "|---" * (len(first["by_seeds"]) + 4) + "|"]
  for where, r in p.items():
    fit = r["fit"]
    cells = [f"{x['se']:.4f} (±{1.959964 * x['se']:.3f})"
             for x in r["by_seeds"]]
    cells += (["-", "-", "-"] if fit is None else [
        f"{fit['floor_se']:.4f}", f"{fit['model_se_one_seed']:.4f}",
        "unreachable (floor)" if fit["seeds_for_target"] is None
        else str(fit["seeds_for_target"])])
    name = ("out of fold, fold-stratified" if r["stratified"]
            else where.replace("_", " ") + " split")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines


def verdict_lines(results: dict) -> list[str]:
  """Every comparison's seed-averaged verdict, out of fold (fold-stratified,
  then pooled) and on the test split (all images, then without near-copies)."""
  test = results.get("test")
  cell = lambda x: "-" if x is None else (  # noqa: E731
      f"{x['diff']:+.3f} {_ci(x)}, p {_p(x['p'])}")
  header = ("| comparison | out of fold, fold-stratified (primary) | out of "
            "fold, pooled |")
  if test:
    header += " test split, all images | test split, without near-copies |"
  lines = ["## Verdicts", "", header, "|---" * header.count(" | ") + "|---|"]
  by_name = {c["name"]: c for c in (test or {}).get("comparisons", [])}
  for c in results["seed_averaged"]["comparisons"]:
    row = f"| {c['name']} | {cell(c['stratified'])} | {cell(c['pooled'])} |"
    if test:  # "-": an arm with no test scores (the mask oracle)
      t = by_name.get(c["name"], {})
      row += (f" {cell(t.get('all'))} | "
              f"{cell(t.get('without_near_copies'))} |")
    lines.append(row)
  return lines + ["", "Seed-averaged scores; 95% DeLong CIs (bootstrap CIs "
                  "in the tables below)." + ("" if test else " No test "
                  "split: these runs wrote no test_scores.csv.")]


def markdown(results: dict) -> str:
  lines = partial_banner(results["runs"])
  lines += ["# Cross-validation: out-of-fold and test-split verdicts", ""]
  lines += verdict_lines(results) + [""]
  lines += seed_averaged_lines(results["seed_averaged"]) + [""]
  lines += power_lines(results.get("power", {})) + [""]
  if "test" in results:
    lines += test_lines(results["test"],
                        "the fold models of every seed (one per fold and "
                        "seed)") + [""]
  for r in results["by_seed"]:
    lines += seed_lines(r) + [""]
  return "\n".join(lines)


def plot_roc(path: str, oof, arms, seed: int) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  keep = oof["seed"] == seed
  fig, ax = plt.subplots(figsize=(6, 6))
  for a in arms:
    fpr, tpr, _ = metrics.roc_curve(oof["label"][keep], oof[a][keep])
    auc = metrics.roc_auc(oof["label"][keep], oof[a][keep])
    ax.plot(fpr, tpr, label=f"{a} ({auc:.3f})", lw=1.2)
  ax.plot([0, 1], [0, 1], "k:", lw=0.8)
  for spe in SPECIFICITIES:
    ax.axvline(1 - spe, color="grey", lw=0.6, ls="--")
  ax.set(xlabel="1 - specificity", ylabel="sensitivity",
         title=f"Out-of-fold ROC, seed {seed}")
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_tables(out: str, compute=None, markdown_fn=None) -> dict:
  """results.json and results.md of OUT, from its CSVs."""
  results = (compute or compute_all)(out)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=1, sort_keys=True)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write((markdown_fn or markdown)(results))
  print(f"wrote {out}/results.md", flush=True)
  return results


def write_report(run_dirs, out: str, expected=None,
                 exclude_images="") -> dict:
  """Collects RUN_DIRS' predictions into OUT's CSVs, then the tables.

  ``expected``: every (fold, seed) the CV was meant to have (default: the
  runs given); missing ones put the partial banner on results.md.
  ``exclude_images``: the test images with a near-copy in train +
  validation, as a file of ids or ``near_copy_rows``.
  """
  os.makedirs(out, exist_ok=True)
  tables = collect(run_dirs)
  arms = tuple(tables["arms"])
  p = lambda name: os.path.join(out, name)  # noqa: E731
  write_csv(p("oof_scores.csv"), tables["oof"], KEYS + arms)
  write_csv(p("oof_jaccard.csv"), tables["jaccard"], KEYS + arms)
  write_csv(p("thresholds.csv"), tables["thresholds"],
            ("fold", "seed", "arm") + tuple(f"threshold_spe{s}"
                                           for s in SPECIFICITIES))
  if os.path.exists(p("test_scores.csv")):
    os.remove(p("test_scores.csv"))  # never a stale table
  if tables["test"]:
    write_csv(p("test_scores.csv"), tables["test"],
              TEST_KEYS + tuple(tables["test_arms"]))
  write_near_copies(out, exclude_images)
  finished = {(r["fold"], r["seed"]) for r in tables["thresholds"]}
  write_csv(p("runs.csv"), [
      {"fold": f, "seed": s, "finished": int((f, s) in finished)}
      for f, s in sorted(set(expected or ()) | finished)],
            ("fold", "seed", "finished"))
  results = write_tables(out)
  t = read_tables(out)
  for seed in sorted(set(t["oof"]["seed"])):
    plot_roc(p(f"roc_seed{seed}.png"), t["oof"], list(arms), int(seed))
  return results


# ----------------------------------------------------------------------------
# --check: every figure of results.json and results.md, recomputed.


def json_differences(fresh, saved, where: str = "results.json") -> list[str]:
  """Every key, entry or number of ``saved`` that is not ``fresh``'s."""
  if isinstance(fresh, dict) and isinstance(saved, dict):
    out = [f"{where}.{k}: missing (recomputed {fresh[k]!r:.60})"
           for k in fresh if k not in saved]
    out += [f"{where}.{k}: extra, not recomputed from the CSVs"
            for k in saved if k not in fresh]
    for k in fresh:
      if k in saved:
        out += json_differences(fresh[k], saved[k], f"{where}.{k}")
    return out
  if isinstance(fresh, list) and isinstance(saved, list):
    out = ([] if len(fresh) == len(saved) else
           [f"{where}: {len(saved)} entries saved, {len(fresh)} recomputed"])
    for i, (x, y) in enumerate(zip(fresh, saved)):
      label = x.get("name", x.get("arm", x.get("seed", i))) if isinstance(
          x, dict) else i
      out += json_differences(x, y, f"{where}[{label}]")
    return out
  if (isinstance(fresh, float) and isinstance(saved, (int, float))
      and not isinstance(saved, bool)):
    ok = math.isclose(fresh, saved, rel_tol=1e-9, abs_tol=1e-12)
  else:
    ok = fresh == saved and type(fresh) is type(saved)
  return [] if ok else [f"{where}: saved {saved!r}, recomputed {fresh!r}"]


def markdown_differences(fresh: str, path: str) -> list[str]:
  """The lines of the saved markdown that are not the recomputed ones."""
  if not os.path.exists(path):
    return [f"{path}: missing"]
  with open(path) as f:
    saved = f.read().split("\n")
  fresh_lines = fresh.split("\n")
  name = os.path.basename(path)
  out = [f"{name} line {i + 1}: saved {s!r}, recomputed {r!r}"
         for i, (s, r) in enumerate(zip(saved, fresh_lines)) if s != r]
  out += [f"{name} line {i + 1}: extra line {s!r}, not recomputed"
          for i, s in enumerate(saved[len(fresh_lines):], len(fresh_lines))]
  out += [f"{name} line {i + 1}: missing line {r!r}"
          for i, r in enumerate(fresh_lines[len(saved):], len(saved))]
  return out


def check(out: str, compute=None, markdown_fn=None) -> list[str]:
  """Differences between OUT's results.json/results.md and a recomputation
  from OUT's CSVs; [] when every figure recomputes."""
  try:
    fresh = (compute or compute_all)(out)
  except (ValueError, KeyError) as e:
    return [f"{out}: the CSVs do not recompute: {e}"]
  path = os.path.join(out, "results.json")
  if not os.path.exists(path):
    return [f"{path}: missing"]
  try:
    with open(path) as f:
      saved = json.load(f)
  except ValueError as e:
    return [f"{path}: not JSON: {e}"]
  return (json_differences(fresh, saved) + markdown_differences(
      (markdown_fn or markdown)(fresh), os.path.join(out, "results.md")))


def parse_expected(text: str) -> list[tuple[int, int]]:
  """``"0:0,1:0"`` (fold:seed pairs) -> [(0, 0), (1, 0)]."""
  return [tuple(int(x) for x in pair.split(":")) for pair in text.split(",")
          if pair]


def add_near_copy_args(parser) -> None:
  parser.add_argument("--exclude-images", default="",
                      help="test images with a near-copy in train + "
                      "validation (CSV with an image column, or one a line)")
  parser.add_argument("--near-copies-from", default="",
                      help="find them instead with folds.near_copies on the "
                      "data of this run dir (loads the images)")
  parser.add_argument("--data-root", default="",
                      help="where that run's relative data paths start")


def near_copy_choice(args):
  """The ``exclude_images`` of write_report that the flags ask for."""
  if args.exclude_images and args.near_copies_from:
    raise SystemExit("give --exclude-images or --near-copies-from, not both")
  if args.near_copies_from:
    rows = near_copies_of_run(args.near_copies_from, args.data_root)
    print(f"{len(rows)} test images have a near-copy in train + validation",
          flush=True)
    return rows
  return args.exclude_images


def report_parser(doc: str, runs_help: str, expected_flag: str,
                  expected_help: str) -> argparse.ArgumentParser:
  """The flags both reports take: run dirs, --out, what was meant to run,
  the near-copy list, --check OUT and --rebuild OUT."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument("runs", nargs="*", help=runs_help)
  parser.add_argument("--out", default="")
  parser.add_argument(expected_flag, default="", help=expected_help)
  add_near_copy_args(parser)
  parser.add_argument("--check", default="",
                      help="recompute OUT/results.json and results.md")
  parser.add_argument("--rebuild", default="",
                      help="rewrite OUT/results.json and results.md")
  return parser


def check_or_rebuild(args, *tables) -> int | None:
  """Runs --check or --rebuild when given: the exit status, else None."""
  if args.check:
    diffs = check(args.check, *tables)
    print("\n".join(diffs) or f"{args.check}: results.json and results.md "
          "recompute from its CSVs", flush=True)
    return 1 if diffs else 0
  if args.rebuild:
    write_tables(args.rebuild, *tables)
    return 0
  return None


def main(argv=None) -> int:
  parser = report_parser(__doc__, "fold run workdirs", "--expected-runs",
                         "fold:seed pairs the CV was meant to have")
  args = parser.parse_args(argv)
  status = check_or_rebuild(args)
  if status is not None:
    return status
  if not args.runs or not args.out:
    parser.error("give fold run workdirs and --out (or --check/--rebuild OUT)")
  write_report(args.runs, args.out, parse_expected(args.expected_runs),
               near_copy_choice(args))
  return 0


if __name__ == "__main__":
  sys.exit(main())
