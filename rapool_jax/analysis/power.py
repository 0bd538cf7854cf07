"""How the SE of a paired AUC difference falls with the seeds averaged."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import optimize

from rapool_jax import stats
from rapool_jax.analysis import frames

# The target for the primary out-of-fold difference: a 95% CI of
# +-0.017 (about 0.7 x the paper's claimed RAP - GAP gain of 0.024).
HALF_WIDTH_TARGET = 0.017


def _se(frame: pd.DataFrame, a: str, b: str, strata: str) -> float:
  keep = ("label", strata) if strata else ("label",)
  m = frames.average_wide(frame[["image", *keep, a, b]], ["image", *keep],
                          keep)
  y, sa, sb = (m[c].to_numpy() for c in ("label", a, b))
  return (stats.stratified_delong(y, sa, sb, m[strata].to_numpy())
          if strata else stats.paired_delong(y, sa, sb))["se"]


def _fit(rows: list[dict]) -> dict:
  """SE²(k) = floor + model / k by non-negative least squares, and the
  seeds that reach ``HALF_WIDTH_TARGET`` (None: the floor alone exceeds it)."""
  k = np.array([r["seeds"] for r in rows], float)
  (floor, model), _ = optimize.nnls(np.stack([np.ones_like(k), 1 / k], 1),
                                    np.array([r["se"] for r in rows]) ** 2)
  target_var = (HALF_WIDTH_TARGET / 1.959964) ** 2
  return {"floor_se": float(np.sqrt(floor)),
          "model_se_one_seed": float(np.sqrt(model)),
          "seeds_for_target": (int(math.ceil(model / (target_var - floor)))
                               if target_var > floor else None)}


def se_by_seed_count(frame, a: str, b: str, strata: str = "") -> dict:
  """SE of ``a - b`` (DeLong; fold-stratified with ``strata="fold"``) on each
  image's score averaged over k seeds, for each k (the mean over every
  k-subset of the seeds), and ``_fit``: ``floor`` is the image-sampling
  part no number of seeds removes, ``model`` the training noise that
  averaging divides. ``frame``: wide rows (or a dict of [N] columns)
  ``image, label, seed[, strata], a, b``."""
  frame = pd.DataFrame(frame)
  seeds = sorted(set(frame["seed"].tolist()))
  rows = []
  for k in range(1, len(seeds) + 1):
    ses = [_se(frame[frame["seed"].isin(subset)], a, b, strata)
           for subset in itertools.combinations(seeds, k)]
    rows.append({"seeds": k, "subsets": len(ses), "se": float(np.mean(ses))})
  return {"a": a, "b": b, "stratified": bool(strata), "by_seeds": rows,
          "target_half_width": HALF_WIDTH_TARGET,
          "fit": _fit(rows) if len(rows) >= 2 else None}


def primary_power(oof, test, auc, test_arms=()) -> dict:
  """``se_by_seed_count`` of the primary (first) comparison ``auc[0]``, out
  of fold (fold-stratified, the primary) and on the test split (when
  ``test_arms``, its columns, hold both)."""
  if not auc:
    return {}
  a, b = auc[0].a, auc[0].b
  out = {"out_of_fold": se_by_seed_count(oof, a, b, strata="fold")}
  if test is not None and {a, b} <= set(test_arms):
    out["test"] = se_by_seed_count(test, a, b)
  return out
