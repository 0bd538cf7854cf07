"""Inferential statistics for classifiers scored on the same images.

DeLong CIs and paired tests (pooled and stratified by fold), the stratified
paired bootstrap, and sensitivities at matched specificity (McNemar), on
``metrics``' AUC, threshold rule and input checks; numpy/scipy, no jax.

Conventions: labels ``[N]`` 0/1 with both classes, 1 = positive; scores
``[N]`` finite, higher = more likely positive; P positives, Q negatives;
predicted positive means ``score >= threshold``. Seeds: average each image's
scores over the seeds first (one score per image), then test; the tests
here treat images as the only random units.

References: DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837;
Sun & Xu (2014), IEEE Signal Processing Letters 21(11):1389 (fast DeLong).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st

from rapool_jax import metrics


def _alpha(alpha: float) -> float:
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}")
  return float(alpha)


def _normal(est: float, se: float, alpha: float, lo: float, hi: float) -> dict:
  """Normal (1 - alpha) CI clipped to [lo, hi] and two-sided p of est = 0
  (z = 0, p = 1 when se == 0, where the test is undefined)."""
  half = _st.norm.ppf(1.0 - _alpha(alpha) / 2.0) * se
  z = est / se if se > 0.0 else 0.0
  p = float(2.0 * _st.norm.sf(abs(z))) if se > 0.0 else 1.0
  return {"se": se, "lo": float(max(lo, est - half)),
          "hi": float(min(hi, est + half)), "z": float(z), "p": p}


# ---------------------------------------------------------------- DeLong


def delong_components(labels, scores):
  """Fast DeLong structural components (Sun & Xu 2014), O(M N log N).

  labels [N]; scores [M, N] (M models on the same images) -> (v10 [M, P],
  v01 [M, Q]): the share of negatives each positive beats and of positives
  beating each negative (ties 1/2), in the order of ``labels``. Each row of
  either averages to the model's AUC.
  """
  y, s = metrics.as_labels_scores(labels, scores)
  s = np.atleast_2d(s)
  p, q = int(y.sum()), int((~y).sum())
  ranks = _st.rankdata(s, axis=1)  # mid-ranks among all images
  # Rank among all minus rank within the class = how many of the other class
  # lie below (ties 1/2).
  v10 = (ranks[:, y] - _st.rankdata(s[:, y], axis=1)) / q
  v01 = 1.0 - (ranks[:, ~y] - _st.rankdata(s[:, ~y], axis=1)) / p
  return v10, v01


def _delong_cov(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
  """[M, P], [M, Q] components -> DeLong covariance of the M AUCs [M, M]."""
  p, q = v10.shape[1], v01.shape[1]
  if p < 2 or q < 2:
    raise ValueError("DeLong variance needs at least 2 positives and 2 "
                     f"negatives, got {p} and {q}")
  return (np.atleast_2d(np.cov(v10, ddof=1)) / p
          + np.atleast_2d(np.cov(v01, ddof=1)) / q)


def auc_ci(labels, scores, alpha: float = 0.05) -> dict:
  """AUC of scores [N] with DeLong SE and normal (1 - alpha) CI clipped to
  [0, 1]. Returns dict(auc, se, lo, hi) of floats."""
  auc = metrics.roc_auc(labels, scores)
  var = _delong_cov(*delong_components(labels, scores))[0, 0]
  out = _normal(auc, math.sqrt(max(float(var), 0.0)), alpha, 0.0, 1.0)
  return {"auc": auc, "se": out["se"], "lo": out["lo"], "hi": out["hi"]}


def _paired_parts(y, a, b) -> tuple[float, float, float]:
  """(auc_a, auc_b, DeLong variance of auc_a - auc_b) on one set of images."""
  cov = _delong_cov(*delong_components(y, np.stack([a, b])))
  # Identical rankings give exactly 0; clamp rounding negatives.
  var = max(float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]), 0.0)
  return metrics.roc_auc(y, a), metrics.roc_auc(y, b), var


def _validated_pair(labels, scores_a, scores_b):
  y, a = metrics.as_labels_scores(labels, scores_a, "scores_a")
  _, b = metrics.as_labels_scores(labels, scores_b, "scores_b")
  if a.ndim != 1 or b.ndim != 1:
    raise ValueError(f"scores_a and scores_b must be [N], got shapes "
                     f"{a.shape} and {b.shape}")
  return y, a, b


def paired_delong(labels, scores_a, scores_b, alpha: float = 0.05) -> dict:
  """DeLong test of auc_a - auc_b, both models scored on the same N images.

  scores_a, scores_b [N]. Normal (1 - alpha) CI on diff clipped to [-1, 1],
  two-sided p; z = 0, p = 1 when se == 0 (e.g. identical rankings).
  Returns dict(auc_a, auc_b, diff, se, lo, hi, z, p) of floats.
  """
  y, a, b = _validated_pair(labels, scores_a, scores_b)
  auc_a, auc_b, var = _paired_parts(y, a, b)
  diff = auc_a - auc_b
  return {"auc_a": auc_a, "auc_b": auc_b, "diff": diff,
          **_normal(diff, math.sqrt(var), alpha, -1.0, 1.0)}


def _strata(strata, n: int) -> list[tuple[object, np.ndarray]]:
  """strata [N] (fold ids, any values) -> [(stratum, image indices)], sorted."""
  g = np.asarray(strata)
  if g.shape != (n,):
    raise ValueError(f"strata must be [N] = ({n},), got shape {g.shape}")
  values, inverse = np.unique(g, return_inverse=True)
  return [(v.item() if hasattr(v, "item") else v, np.flatnonzero(inverse == k))
          for k, v in enumerate(values)]


def stratified_delong(labels, scores_a, scores_b, strata,
                      alpha: float = 0.05) -> dict:
  """Fold-stratified paired DeLong test of auc_a - auc_b.

  scores_a, scores_b, strata [N] (strata: e.g. each image's fold). Each
  stratum's DeLong difference is combined with weight P_s Q_s / sum(P Q):
  the result is the difference of the AUCs over within-stratum (positive,
  negative) pairs only, so pairs scored by different fold models, whose
  calibrations differ, never enter. Why these weights: they are fixed by the
  design (stratified resampling keeps every P_s and Q_s, so
  ``paired_bootstrap_auc_diff`` resamples this very estimate), and they
  weigh a fold by its information; inverse-variance weights would instead
  follow noisy per-fold SEs (a fold whose two models happen to agree would
  dominate). Strata hold different images, so var = sum w_s^2 var_s. Every
  stratum needs at least 2 positives and 2 negatives. With one stratum this is
  ``paired_delong``. Returns dict(auc_a, auc_b, diff, se, lo, hi, z, p,
  strata): the AUCs are the weighted per-stratum AUCs; ``strata`` lists
  dict(stratum, n_pos, n_neg, weight, auc_a, auc_b, diff, se) per stratum.
  """
  y, a, b = _validated_pair(labels, scores_a, scores_b)
  rows = []
  for name, idx in _strata(strata, y.size):
    try:
      auc_a, auc_b, var = _paired_parts(y[idx], a[idx], b[idx])
    except ValueError as e:
      raise ValueError(f"stratum {name!r}: {e}") from None
    rows.append({"stratum": name, "n_pos": int(y[idx].sum()),
                 "n_neg": int((~y[idx]).sum()), "auc_a": auc_a,
                 "auc_b": auc_b, "diff": auc_a - auc_b, "se": math.sqrt(var)})
  pq = np.array([r["n_pos"] * r["n_neg"] for r in rows], np.float64)
  w = pq / pq.sum()
  for r, wk in zip(rows, w):
    r["weight"] = float(wk)
  auc_a, auc_b, diff, se = (np.array([r[k] for r in rows])
                             for k in ("auc_a", "auc_b", "diff", "se"))
  diff = float(w @ diff)
  return {"auc_a": float(w @ auc_a), "auc_b": float(w @ auc_b), "diff": diff,
          **_normal(diff, math.sqrt(float(w**2 @ se**2)), alpha, -1.0, 1.0),
          "strata": rows}


# ---------------------------------------------------------------- bootstrap


def _resampled_auc(x_pos, ys_neg, cp, cn_sorted):
  """AUCs of B resamples given per-image multiplicities.

  x_pos [P] positive scores; ys_neg [Q] negative scores sorted ascending;
  cp [B, P] times each positive was drawn; cn_sorted [B, Q] times each
  (sorted) negative was drawn. -> [B]. O(B (P + Q)), exact Mann-Whitney
  with ties 1/2.
  """
  p, q = cp.shape[1], cn_sorted.shape[1]
  lo = np.searchsorted(ys_neg, x_pos, side="left")  # negatives strictly below
  hi = np.searchsorted(ys_neg, x_pos, side="right")  # ... or tied
  cum = np.zeros((cn_sorted.shape[0], q + 1))
  np.cumsum(cn_sorted, axis=1, out=cum[:, 1:])
  below = cum[:, lo]
  tied = cum[:, hi] - below
  return np.sum(cp * (below + 0.5 * tied), axis=1) / (p * q)


def _bootstrap_problem(y, a, b, groups):
  """(samples, statistic, diff) for scipy.stats.bootstrap: per stratum its
  positive and its negative image indices, resampled independently; the
  statistic is the P_s Q_s-weighted AUC difference of the resampled images,
  and diff its value on the original images."""
  samples, models, pq, diffs = [], [], [], []
  slot = np.empty(y.size, dtype=np.intp)  # image -> place in its class
  for _, idx in groups:
    pos, neg = idx[y[idx]], idx[~y[idx]]
    slot[pos], slot[neg] = np.arange(pos.size), np.arange(neg.size)
    samples += [pos, neg]
    pq.append(float(pos.size * neg.size))
    diffs.append(metrics.roc_auc(y[idx], a[idx])
                 - metrics.roc_auc(y[idx], b[idx]))
    # Negatives sorted once per model so that each resample is a cumsum.
    models.append([(s[pos], np.sort(s[neg]), np.argsort(s[neg]))
                   for s in (a, b)])
  weights = np.array(pq) / sum(pq)

  def counts(idx, size):
    # idx [..., K] image indices -> [B, size] multiplicities of each slot.
    sl = slot[np.asarray(idx).astype(np.intp)].reshape(-1, np.shape(idx)[-1])
    flat = sl + size * np.arange(sl.shape[0])[:, None]
    return np.bincount(flat.ravel(), minlength=sl.shape[0] * size).reshape(
        -1, size).astype(np.float64)

  def statistic(*drawn, axis=-1):
    del axis  # always the last one: vectorized=True, axis=-1 below
    diff = 0.0
    for w, model, pi, ni in zip(weights, models, drawn[::2], drawn[1::2]):
      cp, cn = counts(pi, model[0][0].size), counts(ni, model[0][1].size)
      (xa, ya, oa), (xb, yb, ob) = model
      diff = diff + w * (_resampled_auc(xa, ya, cp, cn[:, oa])
                         - _resampled_auc(xb, yb, cp, cn[:, ob]))
    return np.reshape(diff, np.shape(drawn[0])[:-1])

  return tuple(samples), statistic, float(weights @ diffs)


def paired_bootstrap_auc_diff(labels, scores_a, scores_b, n_resamples=2000,
                              seed: int = 0, alpha: float = 0.05,
                              strata=None) -> dict:
  """Stratified, paired percentile bootstrap CI of auc_a - auc_b.

  scores_a, scores_b [N]; strata [N] or None (one stratum). Within each
  stratum (e.g. fold) positives and negatives are resampled separately, so
  every resample keeps each stratum's P_s and Q_s, and both models are
  scored on the same resampled images; the statistic is the P_s Q_s-weighted
  difference of ``stratified_delong`` (the plain AUC difference for one
  stratum). scipy.stats.bootstrap, deterministic given seed. Returns
  dict(diff, lo, hi): diff on the original data, as ``stratified_delong``.
  """
  alpha = _alpha(alpha)
  if int(n_resamples) < 1:
    raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
  y, a, b = _validated_pair(labels, scores_a, scores_b)
  groups = _strata(np.zeros(y.size) if strata is None else strata, y.size)
  for name, idx in groups:
    n_pos = int(y[idx].sum())
    if min(n_pos, idx.size - n_pos) < 2:  # scipy resamples samples of >= 2
      raise ValueError(f"stratum {name!r}: the bootstrap needs at least 2 "
                       f"positives and 2 negatives, got {n_pos} and "
                       f"{idx.size - n_pos}")
  diff, res = _bootstrap(y, a, b, groups, n_resamples, seed, alpha)
  return {"diff": diff, "lo": float(res.confidence_interval.low),
          "hi": float(res.confidence_interval.high)}


def _bootstrap(y, a, b, groups, n_resamples, seed, alpha=0.05):
  """``(diff, scipy's BootstrapResult)`` of ``paired_bootstrap_auc_diff``."""
  samples, statistic, diff = _bootstrap_problem(y, a, b, groups)
  # Bound the per-call working set (B x N floats) for large test sets.
  batch = int(max(1, min(int(n_resamples), 20_000_000 // y.size)))
  return diff, _st.bootstrap(
      samples, statistic, n_resamples=int(n_resamples), batch=batch,
      vectorized=True, paired=False, axis=-1, confidence_level=1.0 - alpha,
      method="percentile", rng=np.random.default_rng(seed))


def interaction_bootstrap(labels, scores_a, scores_b, in_group, strata=None,
                          n_resamples: int = 2000, seed: int = 0,
                          alpha: float = 0.05,
                          replicates: bool = False) -> dict:
  """Whether ``auc_a - auc_b`` differs between two groups of images: the
  interaction I = D(in group) - D(rest), each D the stratum-weighted paired
  difference of ``stratified_delong``.

  ``labels, scores_a, scores_b, in_group`` (bool), ``strata`` [N]. Images are
  resampled within group x stratum x label, the same images for both models
  (paired); the groups hold different images, so their replicates are
  independent. Returns dict(diff, lo, hi, se, p, diff_in, diff_out,
  se_delong, p_delong): percentile CI, two-sided p from the bootstrap SE
  (normal reference), and the DeLong cross-check (the two variances added).
  """
  y, a, b = _validated_pair(labels, scores_a, scores_b)
  g = np.asarray(in_group, bool)
  strata = np.zeros(y.size) if strata is None else np.asarray(strata)
  parts, delong = [], []
  for k, rows in enumerate((g, ~g)):
    groups = _strata(strata[rows], int(rows.sum()))
    parts.append(_bootstrap(y[rows], a[rows], b[rows], groups, n_resamples,
                            seed + k, alpha))
    delong.append(stratified_delong(y[rows], a[rows], b[rows], strata[rows]))
  reps = (parts[0][1].bootstrap_distribution
          - parts[1][1].bootstrap_distribution)
  diff = parts[0][0] - parts[1][0]
  lo, hi = np.percentile(reps, [50 * _alpha(alpha), 100 - 50 * _alpha(alpha)])
  se = float(np.std(reps, ddof=1))
  se_delong = math.hypot(delong[0]["se"], delong[1]["se"])
  out = {"diff": diff, "lo": float(lo), "hi": float(hi), "se": se,
         "p": _normal(diff, se, alpha, -2, 2)["p"],
         "diff_in": parts[0][0], "diff_out": parts[1][0],
         "se_delong": se_delong,
         "p_delong": _normal(diff, se_delong, alpha, -2, 2)["p"]}
  return out | ({"replicates": reps} if replicates else {})


def holm(p_values) -> np.ndarray:
  """Holm's step-down adjusted p values ``[K]`` of ``p_values [K]``."""
  p = np.asarray(p_values, np.float64)
  order = np.argsort(p)
  adjusted = np.maximum.accumulate(
      np.minimum(1.0, (p.size - np.arange(p.size)) * p[order]))
  out = np.empty_like(p)
  out[order] = adjusted
  return out


# ---------------------------------------------------------------- sensitivity


def mcnemar(correct_a, correct_b) -> dict:
  """Exact McNemar test on paired correctness [N] (bool) of two classifiers
  on the same cases.

  b = #(a right, b wrong), c = #(a wrong, b right); p is the exact two-sided
  binomial p of b ~ Bin(b + c, 1/2) (p = 1 when b + c == 0); statistic =
  min(b, c), as statsmodels' exact McNemar. Returns dict(b, c, p, statistic).
  """
  ca, cb = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
  if ca.ndim != 1 or ca.shape != cb.shape:  # would broadcast silently
    raise ValueError(f"mcnemar needs two [N], got {ca.shape} and {cb.shape}")
  b, c = int(np.sum(ca & ~cb)), int(np.sum(~ca & cb))
  p = 1.0 if b + c == 0 else float(_st.binomtest(b, b + c, 0.5).pvalue)
  return {"b": b, "c": c, "p": p, "statistic": min(b, c)}


def paired_sensitivity(labels, scores_a, scores_b, threshold_a, threshold_b,
                       max_specificity_gap: float = 0.01) -> dict:
  """Two models' sensitivities at thresholds set elsewhere, paired (McNemar)
  on the positives.

  scores_a, scores_b [N]; thresholds floats or [N] (one per image): each
  fold's own chosen on other data, or ``metrics.threshold_at_specificity``
  on these labels, which depends on the negatives only, so McNemar on the
  positives stays a valid paired test. A sensitivity difference is a verdict
  only at equal specificity: ``matched`` says whether |spe_a - spe_b| <=
  ``max_specificity_gap``, and when it is not, ``p`` is None, never a
  confounded p. Returns dict(sens_a, sens_b, spe_a, spe_b, specificity_gap,
  matched, b, c, p); b/c count positives only a/b found.
  """
  y, a, b = _validated_pair(labels, scores_a, scores_b)
  op_a = metrics.operating_point(y, a, threshold_a)
  op_b = metrics.operating_point(y, b, threshold_b)
  found = mcnemar((a >= np.asarray(threshold_a))[y],
                  (b >= np.asarray(threshold_b))[y])
  gap = op_a["specificity"] - op_b["specificity"]
  matched = bool(abs(gap) <= max_specificity_gap + 1e-12)
  return {"sens_a": op_a["sensitivity"], "sens_b": op_b["sensitivity"],
          "spe_a": op_a["specificity"], "spe_b": op_b["specificity"],
          "specificity_gap": gap, "matched": matched, "b": found["b"],
          "c": found["c"], "p": found["p"] if matched else None}
