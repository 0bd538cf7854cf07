"""The cross-validation report: fold runs -> OUT's CSVs -> every figure.

OUT holds ``oof_scores.csv`` / ``oof_jaccard.csv`` (``image,label,fold,
seed``, one column per arm), ``thresholds.csv``, ``test_scores.csv``
(``image,label,seed,fold``), ``runs.csv``, ``arms.csv`` and
``comparisons.csv`` (``design``), ``test_near_copies.csv``; ``compute_all``
turns them into ``results.json``'s figures, ``crossval_text`` into markdown.
"""

from __future__ import annotations

import collections
import json
import os

import numpy as np
import pandas as pd

from rapool_jax import metrics
from rapool_jax import stats
from rapool_jax.analysis import design
from rapool_jax.analysis import frames
from rapool_jax.analysis import near_copies
from rapool_jax.analysis import paired
from rapool_jax.analysis import power
from rapool_jax.analysis import recompute
from rapool_jax.analysis import runs

SPECIFICITIES = (0.884, 0.923)  # the paper's RankOpt and softmax operating points
KEYS = ("image", "label", "fold", "seed")
TEST_KEYS = ("image", "label", "seed", "fold")
TEST_SPLIT = near_copies.TEST_SPLIT


def thresholds(val: pd.DataFrame, columns, key: dict) -> list[dict]:
  """Per column, the thresholds reaching ``SPECIFICITIES`` on ``val``."""
  y = val["label"].to_numpy()
  return [{**key, "arm": c, **{
      f"threshold_spe{spe}": metrics.threshold_at_specificity(
          y, val[c].to_numpy(), spe) for spe in SPECIFICITIES}}
          for c in columns]


def test_columns(run: str, columns, test_columns_so_far):
  """The columns with predictions on the test split (an arm pooling over
  the true mask scores no image without one); ValueError when runs differ."""
  test_dir = os.path.join(run, "predictions", TEST_SPLIT)
  present = [c for c in columns
             if os.path.exists(os.path.join(test_dir, c + ".csv"))]
  if test_columns_so_far is not None and present != test_columns_so_far:
    raise ValueError(f"{test_dir}: arms {present} differ from the other "
                     f"runs' {test_columns_so_far}")
  return present


def collect(run_dirs, declaring: dict | None = None) -> dict:
  """Frames of every CSV (``oof``, ``jaccard``, ``thresholds``, ``test`` or
  None), the ``arms`` (arm -> column) and ``comparisons`` of the fold runs
  (those of ``declaring``, a config as JSON, when given), in (fold, seed)
  order whatever the runs' folder names."""
  tables = collections.defaultdict(list)
  configs = {run: frames.run_config(run) for run in run_dirs}
  keys = {run: {"fold": c["data"]["crossval"]["fold"], "seed": c["seed"]}
          for run, c in configs.items()}
  arms, test_cols, with_test = None, None, []
  for run in sorted(run_dirs, key=lambda r: (keys[r]["fold"],
                                             keys[r]["seed"], r)):
    config, key = configs[run], keys[run]
    these = runs.run_arms(run, config)
    if arms is not None and these != arms:
      raise ValueError(f"{run}: arms {list(these.values())} differ from "
                       f"{list(arms.values())}")
    arms, columns = these, list(these.values())
    split = config["data"]["eval_split"]
    tables["oof"].append(frames.run_scores(run, split, columns, key))
    tables["jaccard"].append(frames.run_scores(run, split, columns, key,
                                               "jaccard"))
    val = frames.run_scores(run, config["data"]["val_split"], columns, key)
    tables["thresholds"] += thresholds(val, columns, key)
    if os.path.isdir(os.path.join(run, "predictions", TEST_SPLIT)):
      with_test.append(run)
      test_cols = test_columns(run, columns, test_cols)
      tables["test"].append(frames.run_scores(run, TEST_SPLIT, test_cols, key))
  if with_test and len(with_test) != len(run_dirs):
    missing = sorted(set(run_dirs) - set(with_test))
    raise ValueError(f"{missing[0]}: no predictions/{TEST_SPLIT}/, which "
                     f"{len(with_test)} other runs have")
  comparisons, notes = design.applicable(configs[sorted(run_dirs)[0]],
                                         declaring)
  for line in notes:
    print(line, flush=True)
  cat = lambda parts, cols: pd.concat(parts, ignore_index=True)[cols]  # noqa: E731
  return {"oof": cat(tables["oof"], [*KEYS, *arms.values()]),
          "jaccard": cat(tables["jaccard"], [*KEYS, *arms.values()]),
          "thresholds": pd.DataFrame(tables["thresholds"]),
          "test": (cat(tables["test"], [*TEST_KEYS, *test_cols])
                   if with_test else None),
          "arms": arms, "comparisons": comparisons}


def tidy_scores(out: str, split: str = "oof") -> pd.DataFrame:
  """OUT's ``oof`` (or ``test``) scores as a tidy frame [rows * arms]:
  ``image, label, fold, seed, arm, score``, arms by name (arms.csv)."""
  name, keys = {"oof": ("oof_scores.csv", KEYS),
                "test": ("test_scores.csv", TEST_KEYS)}[split]
  path = os.path.join(out, name)
  wide = frames.score_frame(frames.read_csv(path), keys, path)
  arms, _ = design.read(out)
  return frames.tidy(wide.rename(columns={c: a for a, c in arms.items()}),
                     KEYS)


def seed_averaged_scores(out: str, split: str = "oof") -> pd.DataFrame:
  """Each image's score per arm averaged as the report averages it [images *
  arms]: ``image, label, fold, arm, score, n``; out of fold over the seeds
  (its fold's model of each), on the test split over every fold and seed
  model (``fold`` -1 there: one stratum). Join strata with
  ``frames.join_strata``; compare with ``paired``."""
  long = tidy_scores(out, split)
  if split == "test":
    long = long.assign(fold=-1)
  return frames.average_scores(long, keep=("label", "fold"))


def write_csvs(out: str, c: dict, expected=None) -> None:
  """OUT's CSVs from ``collect``'s frames; ``runs.csv`` lists every
  (fold, seed) of ``expected`` and the finished ones."""
  p = lambda name: os.path.join(out, name)  # noqa: E731
  design.write(out, c["arms"], c["comparisons"])
  frames.write_csv(p("oof_scores.csv"), c["oof"])
  frames.write_csv(p("oof_jaccard.csv"), c["jaccard"])
  frames.write_csv(p("thresholds.csv"), c["thresholds"])
  if os.path.exists(p("test_scores.csv")):
    os.remove(p("test_scores.csv"))  # never a stale table
  if c["test"] is not None:
    frames.write_csv(p("test_scores.csv"), c["test"])
  finished = set(zip(c["thresholds"]["fold"].tolist(),
                     c["thresholds"]["seed"].tolist()))
  frames.write_csv(p("runs.csv"), pd.DataFrame(
      [(f, s, int((f, s) in finished))
       for f, s in sorted(set(expected or ()) | finished)],
      columns=["fold", "seed", "finished"]))


# ----------------------------------------------------------------------------
# Reading OUT back, and what must hold of its CSVs.


def read_tables(out: str) -> dict:
  """OUT's CSVs as frames (``oof``, ``jaccard``, ``test`` or None,
  ``thresholds`` as text, ``runs``), ``near_copies`` (or None), ``arms``
  (columns), and ``design`` (arm -> column, comparisons)."""
  p = lambda name: os.path.join(out, name)  # noqa: E731
  read = lambda name, keys: frames.score_frame(  # noqa: E731
      frames.read_csv(p(name)), keys, p(name))
  t = {"oof": read("oof_scores.csv", KEYS),
       "jaccard": read("oof_jaccard.csv", KEYS),
       "thresholds": frames.read_csv(p("thresholds.csv")),
       "runs": frames.read_csv(p("runs.csv")).astype(int),
       "test": (read("test_scores.csv", TEST_KEYS)
                if os.path.exists(p("test_scores.csv")) else None),
       "near_copies": near_copies.read(out), "design": design.read(out)}
  t["arms"] = frames.arm_columns(t["oof"], KEYS)
  return t


def finished_runs(t: dict) -> set:
  return {(f, s) for f, s, done in t["runs"][["fold", "seed", "finished"]]
          .itertuples(index=False) if done}


def validate(t: dict) -> list[str]:
  """Everything that must hold of OUT's CSVs before a figure is computed."""
  oof, arms = t["oof"], t["arms"]
  problems = design.check_columns(t["design"][0], arms, "oof_scores.csv")
  problems += frames.duplicates(oof, ("image", "seed"), "oof_scores.csv")
  problems += frames.same_images_per_group(oof, ("fold", "seed"),
                                           "oof_scores.csv")
  folds = oof.groupby("image")["fold"].unique()
  problems += [f"oof_scores.csv: {i} is in folds {sorted(f.tolist())}"
               for i, f in folds.items() if len(f) > 1]
  jac = t["jaccard"]
  if frames.arm_columns(jac, KEYS) != arms:
    problems.append(f"oof_jaccard.csv: arms {frames.arm_columns(jac, KEYS)} "
                    f"differ from oof_scores.csv's {arms}")
  if len(jac) != len(oof) or not jac[list(KEYS)].equals(oof[list(KEYS)]):
    problems.append("oof_jaccard.csv: its image/label/fold/seed rows differ "
                    "from oof_scores.csv's")
  finished = finished_runs(t)
  scored = set(zip(oof["fold"].tolist(), oof["seed"].tolist()))
  problems += [f"oof_scores.csv: fold {f} seed {s} "
               + ("has rows but runs.csv does not list it as finished"
                  if (f, s) in scored else "is finished in runs.csv but "
                  "has no rows") for f, s in sorted(scored ^ finished)]
  want = sorted((f, s, a) for f, s in finished for a in arms)
  have = sorted((int(f), int(s), a) for f, s, a in t["thresholds"][
      ["fold", "seed", "arm"]].itertuples(index=False))
  if have != want:
    problems.append(f"thresholds.csv: rows {sorted(set(have) ^ set(want))[:4]}"
                    " are missing or extra (one per finished fold, seed, arm)"
                    if set(have) != set(want) else
                    "thresholds.csv: a (fold, seed, arm) appears twice")
  return problems + validate_test(t, finished)


def validate_test(t: dict, finished: set) -> list[str]:
  test = t["test"]
  if test is None:
    return ([f"{near_copies.FILE} without test_scores.csv"]
            if t["near_copies"] is not None else [])
  problems = frames.duplicates(test, ("image", "seed", "fold"),
                               "test_scores.csv")
  test_arms = frames.arm_columns(test, TEST_KEYS)
  if not test_arms or [a for a in t["arms"] if a in test_arms] != test_arms:
    problems.append(f"test_scores.csv: arms {test_arms} are not among "
                    f"oof_scores.csv's {t['arms']}")
  union = set(test["image"])
  for (f, s), have in test.groupby(["fold", "seed"])["image"]:
    problems += [f"test_scores.csv: fold {f} seed {s} did not score {i}"
                 for i in sorted(union - set(have))]
  labels = test.groupby("image")["label"].unique()
  problems += [f"test_scores.csv: {i} has labels {sorted(v.tolist())}"
               for i, v in labels.items() if len(v) > 1]
  scored = set(zip(test["fold"].tolist(), test["seed"].tolist()))
  problems += [f"test_scores.csv: fold {f} seed {s} is finished in runs.csv "
               "but scored no test image" for f, s in sorted(finished - scored)]
  problems += [f"test_scores.csv: fold {f} seed {s} is not a finished run"
               for f, s in sorted(scored - finished)]
  if t["near_copies"] is not None:
    problems += [f"{near_copies.FILE}: {i} is not a test image"
                 for i in sorted(set(t["near_copies"]) - union)]
  return problems


# ----------------------------------------------------------------------------
# The figures (pure functions of the CSVs).


def fold_thresholds(oof, thresholds_text, arm: str, spe: float) -> np.ndarray:
  """[N]: each row's threshold for ``spe`` from its (fold, seed) model's
  validation split."""
  by_key = {(int(f), int(s), a): float(v) for f, s, a, v in thresholds_text[
      ["fold", "seed", "arm", f"threshold_spe{spe}"]].itertuples(index=False)}
  return np.array([by_key[(f, s, arm)] for f, s in
                   zip(oof["fold"].tolist(), oof["seed"].tolist())])


def predicted_positive(oof, thresholds_text, arm: str,
                       spe: float) -> np.ndarray:
  """``[N]`` bool: score >= its own fold's validation threshold for ``spe``."""
  return oof[arm].to_numpy() >= fold_thresholds(oof, thresholds_text, arm, spe)


def arm_row(o, jac, thresholds_text, a: str) -> dict:
  """One arm of one seed: pooled AUC [CI], fold mean, validation-threshold
  operating points, JA."""
  y, s, folds = (o[c].to_numpy() for c in ("label", a, "fold"))
  row = {"arm": a, **stats.auc_ci(y, s)}
  row["auc_fold_mean"] = float(np.mean(
      [metrics.roc_auc(y[folds == f], s[folds == f])
       for f in sorted(set(folds))]))
  for spe in SPECIFICITIES:
    pred = predicted_positive(o, thresholds_text, a, spe)
    row[f"at_spe{spe}"] = {
        "sensitivity": float(pred[y == 1].mean()),
        "specificity": float(1 - pred[y == 0].mean()),
        "accuracy": float((pred == (y == 1)).mean())}
  ja = jac[a].to_numpy()
  row["jaccard"] = float(np.nanmean(ja)) if np.isfinite(ja).any() else None
  return row


def compute_seed(t: dict, seed: int, auc, sens) -> dict:
  """Results of one seed: per-arm rows, AUC comparisons (pooled), and
  sensitivities at the validation thresholds."""
  o = t["oof"][t["oof"]["seed"] == seed]
  jac = t["jaccard"][t["jaccard"]["seed"] == seed]
  y = o["label"].to_numpy()
  col = lambda a: o[a].to_numpy()  # noqa: E731
  comparisons = []
  for c in auc:
    boot = stats.paired_bootstrap_auc_diff(
        y, col(c.a), col(c.b), n_resamples=paired.N_RESAMPLES, seed=seed)
    comparisons.append({"name": c.name, "a": c.a, "b": c.b,
                        "question": c.question,
                        **stats.paired_delong(y, col(c.a), col(c.b)),
                        "boot_lo": boot["lo"], "boot_hi": boot["hi"]})
  thr = lambda a, spe: fold_thresholds(o, t["thresholds"], a, spe)  # noqa: E731
  sensitivity = [{"name": c.name, "a": c.a, "b": c.b, "specificity": spe,
                  **paired.matched_sensitivity(y, col(c.a), col(c.b),
                                               thr(c.a, spe), thr(c.b, spe))}
                 for c in sens for spe in SPECIFICITIES]
  return {"seed": seed, "num_images": int(len(y)),
          "num_melanomas": int(y.sum()),
          "folds": sorted(set(o["fold"].tolist())),
          "arms": [arm_row(o, jac, t["thresholds"], a) for a in t["arms"]],
          "comparisons": comparisons, "sensitivity": sensitivity}


def per_seed_aucs(frame: pd.DataFrame, arm: str) -> list[float]:
  """The AUC of ``arm`` on each seed's rows, seeds in order."""
  return [metrics.roc_auc(g["label"].to_numpy(), g[arm].to_numpy())
          for _, g in frame.groupby("seed")]


def seed_averaged(t: dict, auc, sens) -> dict:
  """The out-of-fold verdicts on each image's score averaged over seeds."""
  oof, arms = t["oof"], t["arms"]
  m = frames.average_wide(oof, KEYS, ("label", "fold"))
  y, folds = m["label"].to_numpy(), m["fold"].to_numpy()
  col = lambda a: m[a].to_numpy()  # noqa: E731
  rows = [{"arm": a, "auc_per_seed": per_seed_aucs(oof, a),
           "auc_seed_mean_sd": paired.mean_sd(per_seed_aucs(oof, a)),
           **stats.auc_ci(y, col(a)),
           "auc_fold_mean": float(np.mean(
               [metrics.roc_auc(y[folds == f], col(a)[folds == f])
                for f in np.unique(folds)]))} for a in arms]
  comparisons = [{"name": c.name, "a": c.a, "b": c.b, "question": c.question,
                  "pooled": paired.paired_auc(y, col(c.a), col(c.b)),
                  "stratified": paired.paired_auc(y, col(c.a), col(c.b),
                                                  strata=folds)}
                 for c in auc]
  thr = lambda a, spe: paired.per_fold_thresholds(y, col(a), folds, spe)  # noqa: E731
  sensitivity = [{"name": c.name, "a": c.a, "b": c.b, "specificity": spe,
                  **paired.matched_sensitivity(y, col(c.a), col(c.b),
                                               thr(c.a, spe), thr(c.b, spe))}
                 for c in sens for spe in SPECIFICITIES]
  return {"seeds": sorted(set(oof["seed"].tolist())),
          "num_images": int(len(y)), "num_melanomas": int(y.sum()),
          "scores_per_image": sorted(set(m["n"].tolist())),
          "arms": rows, "comparisons": comparisons, "sensitivity": sensitivity}


def test_split(t: dict, auc) -> dict:
  """Test-split verdicts: each arm's score of an image is the mean over its
  fold and seed models; with and without the near-copy images. The
  comparisons of arms without test scores (the mask oracle) are left out."""
  test = t["test"]
  arms = frames.arm_columns(test, TEST_KEYS)
  m = frames.average_wide(test, TEST_KEYS)
  by_seed = {s: frames.average_wide(g, TEST_KEYS)
             for s, g in test.groupby("seed")}
  near = set(t["near_copies"] or ())
  keep = ~np.isin(m["image"].to_numpy(), sorted(near))
  y = m["label"].to_numpy()
  col = lambda a: m[a].to_numpy()  # noqa: E731
  rows = [{"arm": a, "auc_per_seed": [metrics.roc_auc(
      b["label"].to_numpy(), b[a].to_numpy()) for b in by_seed.values()],
           **stats.auc_ci(y, col(a)),
           "without_near_copies": (stats.auc_ci(y[keep], col(a)[keep])
                                   if near else None)} for a in arms]
  for r in rows:
    r["auc_seed_mean_sd"] = paired.mean_sd(r["auc_per_seed"])
  comparisons = [{"name": c.name, "a": c.a, "b": c.b, "question": c.question,
                  "all": paired.paired_auc(y, col(c.a), col(c.b)),
                  "without_near_copies": (paired.paired_auc(
                      y[keep], col(c.a)[keep], col(c.b)[keep])
                                          if near else None)}
                 for c in auc if c.a in arms and c.b in arms]
  return {"seeds": sorted(by_seed), "num_images": int(len(y)),
          "num_melanomas": int(y.sum()),
          "models_per_image": sorted(set(m["n"].tolist())),
          "near_copies": len(near), "near_copy_melanomas": int(y[~keep].sum()),
          "arms": rows, "comparisons": comparisons}


def runs_summary(table: pd.DataFrame) -> dict:
  """runs.csv in results.json: expected, finished, missing (fold, seed)."""
  missing = table.loc[table["finished"] == 0, ["fold", "seed"]].values.tolist()
  return {"expected": len(table), "finished": len(table) - len(missing),
          "missing": missing, "folds": sorted(set(table["fold"].tolist())),
          "seeds": sorted(set(table["seed"].tolist()))}


def compute_all(out: str) -> dict:
  """Every figure of results.json from OUT's CSVs (ValueError on bad CSVs)."""
  t = recompute.valid_tables(out, read_tables, validate)
  auc, sens = design.resolve_both(*t["design"])
  results = {"arms": t["arms"], "runs": runs_summary(t["runs"]),
             "match_tolerance": paired.MATCH_TOLERANCE,
             "by_seed": [compute_seed(t, s, auc, sens)
                         for s in sorted(set(t["oof"]["seed"].tolist()))],
             "seed_averaged": seed_averaged(t, auc, sens)}
  if t["test"] is not None:
    results["test"] = test_split(t, auc)
  results["power"] = power.primary_power(
      t["oof"], t["test"], auc,
      () if t["test"] is None else frames.arm_columns(t["test"], TEST_KEYS))
  # As results.json holds it (tuples as lists, no numpy scalars).
  return json.loads(json.dumps(results))
