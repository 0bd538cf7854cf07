"""Paired comparisons of two arms scored on the same images.

On arrays: ``paired_auc`` (DeLong and bootstrap from ``stats.py``, pooled or
fold-stratified) and ``matched_sensitivity``. On a seed-averaged long frame
(``frames.average_scores``: ``image, label, fold, arm, score`` and any
stratum column): ``compare``, ``compare_by_stratum`` and
``interaction`` (the difference of two strata's differences).
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import pandas as pd

from rapool_jax import metrics
from rapool_jax import stats

N_RESAMPLES = 2000
# Two sensitivities are a verdict only at equal specificity: above this gap
# in the specificities actually reached, no McNemar p is printed.
MATCH_TOLERANCE = 0.01


def mean_sd(values) -> dict:
  """Mean and SD (ddof 1; None for one value) of per-seed figures."""
  v = np.asarray(values, float)
  return {"mean": float(v.mean()),
          "sd": float(v.std(ddof=1)) if v.size > 1 else None}


def paired_auc(y, a, b, strata=None, seed: int = 0,
               n_resamples: int = N_RESAMPLES) -> dict:
  """auc(a) - auc(b) on the same images [N]: DeLong CI and p, and a paired
  bootstrap CI resampling positives and negatives apart; with ``strata``
  [N] (each image's fold) both are fold-stratified, so that no (positive,
  negative) pair scored by two different fold models enters."""
  if strata is None:
    d, out = stats.paired_delong(y, a, b), {}
  else:
    d = stats.stratified_delong(y, a, b, strata)
    out = {"fold_diffs": [r["diff"] for r in d["strata"]]}
  boot = stats.paired_bootstrap_auc_diff(y, a, b, n_resamples=n_resamples,
                                         seed=seed, strata=strata)
  return {**{k: d[k] for k in ("auc_a", "auc_b", "diff", "se", "lo", "hi",
                               "p")},
          **out, "boot_lo": boot["lo"], "boot_hi": boot["hi"]}


def matched_sensitivity(y, a, b, threshold_a, threshold_b,
                        tolerance: float = MATCH_TOLERANCE) -> dict:
  """Sensitivities of two arms at thresholds ``[N]`` (or floats) set
  elsewhere; the McNemar p only when the specificities reached differ by at
  most ``tolerance``, else ``p`` is None and ``why`` says so."""
  s = stats.paired_sensitivity(y, a, b, threshold_a, threshold_b,
                               max_specificity_gap=tolerance)
  why = None if s["matched"] else (
      f"not compared: Spe differs by {abs(s['specificity_gap']):.3f} > "
      f"{tolerance}")
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


def pair(frame: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
  """Arms ``a`` and ``b`` of a long frame [N * arms] side by side [N]: its
  columns but ``arm``/``score``/``n``, then ``a`` and ``b``, sorted; a
  ValueError names an arm the frame lacks or says one arm scores other
  images."""
  for arm in (a, b):
    if not (frame["arm"] == arm).any():
      raise ValueError(f"no arm {arm!r} in the frame (arms: "
                       f"{', '.join(frame['arm'].unique())})")
  keys = [c for c in frame.columns if c not in ("arm", "score", "n")]
  sides = [frame[frame["arm"] == arm].set_index(keys)["score"].rename(arm)
           for arm in (a, b)]
  if not sides[0].index.sort_values().equals(sides[1].index.sort_values()):
    raise ValueError(f"arms {a!r} and {b!r} score other images")
  return pd.concat(sides, axis=1).sort_index().reset_index()


def compare(frame: pd.DataFrame, a: str, b: str, within: str | None = "fold",
            seed: int = 0, n_resamples: int = N_RESAMPLES) -> dict:
  """``paired_auc`` of arms ``a`` - ``b`` of a seed-averaged long frame
  [N * arms] (``frames.average_scores``): DeLong and bootstrap stratified by
  the ``within`` column (None: pooled), plus ``n`` and ``positives``."""
  p = pair(frame, a, b)
  y = p["label"].to_numpy()
  out = paired_auc(y, p[a].to_numpy(), p[b].to_numpy(),
                   None if within is None else p[within].to_numpy(), seed,
                   n_resamples)
  return {"n": int(len(y)), "positives": int(y.sum()), **out}


def compare_by_stratum(frame: pd.DataFrame, a: str, b: str, stratum: str,
                       within: str | None = "fold", seed: int = 0,
                       n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
  """``compare`` within each value of the ``stratum`` column [strata rows]:
  ``stratum``, ``n``, ``positives``, diff, DeLong lo/hi/p, boot_lo/hi.
  Rows where it is NaN (unannotated images) are left out: count them."""
  rows = [{stratum: value, **compare(group, a, b, within, seed, n_resamples)}
          for value, group in frame.dropna(subset=[stratum]).groupby(stratum)]
  return pd.DataFrame(rows)


def interaction(frame: pd.DataFrame, a: str, b: str, stratum: str,
                levels: Sequence = (1, 0), within: str | None = "fold",
                n_resamples: int = N_RESAMPLES, seed: int = 0,
                alpha: float = 0.05) -> dict:
  """(a - b where ``stratum == levels[0]``) - (a - b where ``levels[1]``):
  the difference of two groups' ``within``-stratified paired AUC
  differences (``stats.interaction_bootstrap``: images resampled within
  group x ``within`` x label, paired across arms; percentile CI, p from the
  bootstrap SE, DeLong cross-check). Rows of other levels, or NaN, are left
  out."""
  p = pair(frame[frame[stratum].isin(levels)], a, b)
  w = np.zeros(len(p)) if within is None else p[within].to_numpy()
  return stats.interaction_bootstrap(
      p["label"].to_numpy(), p[a].to_numpy(), p[b].to_numpy(),
      (p[stratum] == levels[0]).to_numpy(), w, n_resamples=n_resamples,
      seed=seed, alpha=alpha)


def compare_models(labels, scores: dict, n_resamples: int = N_RESAMPLES,
                   seed: int = 0) -> dict:
  """Per-model AUC with its DeLong CI (``scores``: name -> [N] on the same
  images as ``labels`` [N]), and every pair's DeLong and bootstrap
  difference, in ``scores``' order."""
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
