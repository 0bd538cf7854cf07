"""Paired statistics for comparing classifiers scored on the same images.

Plain numpy/scipy (no jax). Conventions throughout:

* ``labels`` [N] holds 0/1, 1 = positive (melanoma); both classes must occur.
* ``scores`` are finite reals, higher = more likely positive.
* P = number of positives, Q = number of negatives, N = P + Q.
* AUC is the Mann-Whitney probability P(score_pos > score_neg), ties count 1/2.
* Predicted positive means ``score >= threshold``.

References: DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837;
Sun & Xu (2014), IEEE Signal Processing Letters 21(11):1389, "Fast
implementation of DeLong's algorithm for comparing the areas under correlated
receiver operating characteristic curves"; Hanley & McNeil (1982), Radiology
143:29.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st


# ---------------------------------------------------------------- validation


def _labels(labels) -> np.ndarray:
  """labels [N] -> bool [N]; 0/1 only, both classes present."""
  y = np.asarray(labels)
  if y.ndim != 1:
    raise ValueError(f"labels must be 1-D, got shape {y.shape}")
  if y.dtype == bool:
    yb = y
  else:
    if not np.issubdtype(y.dtype, np.number):
      raise ValueError(f"labels must be 0/1 numbers, got dtype {y.dtype}")
    if not np.all((y == 0) | (y == 1)):
      raise ValueError("labels must contain only 0 and 1")
    yb = y == 1
  if yb.all() or not yb.any():
    raise ValueError("labels must contain both classes (at least one 0 and one 1)")
  return yb


def _scores(scores, n: int, name: str = "scores", ndim: int = 1) -> np.ndarray:
  """scores [N] (ndim=1) or [M, N] (ndim=2) -> float64, finite, N matching labels."""
  s = np.asarray(scores)
  if s.ndim != ndim:
    raise ValueError(f"{name} must be {ndim}-D, got shape {s.shape}")
  if not (np.issubdtype(s.dtype, np.number) or s.dtype == bool):
    raise ValueError(f"{name} must be numeric, got dtype {s.dtype}")
  s = s.astype(np.float64)
  if s.shape[-1] != n:
    raise ValueError(f"{name} has {s.shape[-1]} entries per model but labels has {n}")
  if not np.all(np.isfinite(s)):
    raise ValueError(f"{name} must be finite (found NaN or inf)")
  return s


def _alpha(alpha: float) -> float:
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}")
  return float(alpha)


# ---------------------------------------------------------------- AUC / DeLong


def midranks(x) -> np.ndarray:
  """Midranks of x [N]: 1-based ranks, tied values get the mean of their ranks. -> [N] float."""
  x = np.asarray(x)
  if x.ndim != 1:
    raise ValueError(f"midranks needs a 1-D array, got shape {x.shape}")
  n = x.shape[0]
  order = np.argsort(x, kind="mergesort")
  xs = x[order]
  # A new tie group starts wherever the sorted value changes.
  new = np.ones(n, dtype=bool)
  new[1:] = xs[1:] != xs[:-1]
  starts = np.flatnonzero(new)
  ends = np.append(starts[1:], n)  # exclusive
  # Sorted positions start+1 .. end (1-based) share the mean rank.
  mid = (starts + 1 + ends) / 2.0
  out = np.empty(n, dtype=np.float64)
  out[order] = np.repeat(mid, ends - starts)
  return out


def delong_components(labels, scores):
  """Fast DeLong structural components (Sun & Xu 2014).

  labels [N] 0/1; scores [M, N] (M models on the same N images).
  Returns (auc [M], v10 [M, P], v01 [M, Q]) where, with psi(x, y) = 1, 1/2, 0
  for x >, =, < y, v10[k, i] = mean_j psi(X_ki, Y_kj) over negatives j and
  v01[k, j] = mean_i psi(X_ki, Y_kj) over positives i. Positives/negatives
  keep their order of appearance in ``labels``. O(M N log N).
  """
  y = _labels(labels)
  s = _scores(scores, y.shape[0], ndim=2)
  m = s.shape[0]
  x_pos, y_neg = s[:, y], s[:, ~y]
  p, q = x_pos.shape[1], y_neg.shape[1]
  v10 = np.empty((m, p))
  v01 = np.empty((m, q))
  auc = np.empty(m)
  for k in range(m):
    tx = midranks(x_pos[k])  # ranks among positives only
    ty = midranks(y_neg[k])  # ranks among negatives only
    tz = midranks(s[k])  # ranks among all
    tz_pos, tz_neg = tz[y], tz[~y]
    # Rank among all minus rank among positives = #negatives below + 1/2 #tied.
    v10[k] = (tz_pos - tx) / q
    v01[k] = 1.0 - (tz_neg - ty) / p
    auc[k] = (tz_pos.sum() - p * (p + 1) / 2.0) / (p * q)
  return auc, v10, v01


def _delong_cov(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
  """[M, P], [M, Q] components -> DeLong covariance of the M AUCs [M, M]."""
  p, q = v10.shape[1], v01.shape[1]
  if p < 2 or q < 2:
    # ddof=1 sample covariances need two of each class.
    raise ValueError(f"DeLong variance needs at least 2 positives and 2 negatives, got {p} and {q}")
  s10 = np.atleast_2d(np.cov(v10, ddof=1))
  s01 = np.atleast_2d(np.cov(v01, ddof=1))
  return s10 / p + s01 / q


def auc(labels, scores) -> float:
  """Mann-Whitney AUC of scores [N] against labels [N] (ties count 1/2)."""
  y = _labels(labels)
  s = _scores(scores, y.shape[0])
  p = int(y.sum())
  q = y.shape[0] - p
  return float((midranks(s)[y].sum() - p * (p + 1) / 2.0) / (p * q))


def auc_ci(labels, scores, alpha: float = 0.05) -> dict:
  """AUC of scores [N] with DeLong SE and normal (1 - alpha) CI clipped to [0, 1].

  Returns dict(auc, se, lo, hi) of floats.
  """
  alpha = _alpha(alpha)
  y = _labels(labels)
  s = _scores(scores, y.shape[0])
  a, v10, v01 = delong_components(y, s[None, :])
  se = math.sqrt(max(float(_delong_cov(v10, v01)[0, 0]), 0.0))
  z = _st.norm.ppf(1.0 - alpha / 2.0)
  a = float(a[0])
  return dict(auc=a, se=se, lo=float(max(0.0, a - z * se)), hi=float(min(1.0, a + z * se)))


def paired_delong(labels, scores_a, scores_b, alpha: float = 0.05) -> dict:
  """DeLong test for two correlated AUCs (both models scored on the same N images).

  scores_a, scores_b [N]. diff = auc_a - auc_b; se from the DeLong covariance;
  (1 - alpha) normal CI on diff clipped to [-1, 1]; two-sided p. If se == 0
  (e.g. identical rankings) the test is undefined: z = 0, p = 1.
  Returns dict(auc_a, auc_b, diff, se, lo, hi, z, p) of floats.
  """
  alpha = _alpha(alpha)
  y = _labels(labels)
  a = _scores(scores_a, y.shape[0], "scores_a")
  b = _scores(scores_b, y.shape[0], "scores_b")
  aucs, v10, v01 = delong_components(y, np.stack([a, b]))
  cov = _delong_cov(v10, v01)
  # Identical components give exactly 0 here; clamp rounding negatives.
  var = max(float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]), 0.0)
  se = math.sqrt(var)
  diff = float(aucs[0] - aucs[1])
  zc = _st.norm.ppf(1.0 - alpha / 2.0)
  if se > 0.0:
    z = diff / se
    p = float(2.0 * _st.norm.sf(abs(z)))
  else:
    z, p = 0.0, 1.0
  return dict(auc_a=float(aucs[0]), auc_b=float(aucs[1]), diff=diff, se=se,
              lo=float(max(-1.0, diff - zc * se)), hi=float(min(1.0, diff + zc * se)),
              z=float(z), p=p)


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
  """Hanley & McNeil (1982) SE of an AUC (exponential-model approximation).

  Q1 = A/(2-A), Q2 = 2A^2/(1+A),
  var = (A(1-A) + (n_pos-1)(Q1-A^2) + (n_neg-1)(Q2-A^2)) / (n_pos n_neg).
  """
  a = float(auc)
  if not 0.0 <= a <= 1.0:
    raise ValueError(f"auc must be in [0, 1], got {auc}")
  if n_pos < 1 or n_neg < 1:
    raise ValueError(f"n_pos and n_neg must be >= 1, got {n_pos} and {n_neg}")
  q1 = a / (2.0 - a)
  q2 = 2.0 * a * a / (1.0 + a)
  var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
  return math.sqrt(max(var, 0.0))


# ---------------------------------------------------------------- bootstrap


def _resampled_auc(x_pos, ys_neg, cp, cn_sorted):
  """AUCs of B resamples given per-image multiplicities.

  x_pos [P] positive scores; ys_neg [Q] negative scores sorted ascending;
  cp [B, P] times each positive was drawn; cn_sorted [B, Q] times each
  (sorted) negative was drawn. -> [B]. O(B (P + Q)), exact Mann-Whitney with ties 1/2.
  """
  p, q = cp.shape[1], cn_sorted.shape[1]
  lo = np.searchsorted(ys_neg, x_pos, side="left")  # negatives strictly below
  hi = np.searchsorted(ys_neg, x_pos, side="right")  # ... or tied
  cum = np.zeros((cn_sorted.shape[0], q + 1))
  np.cumsum(cn_sorted, axis=1, out=cum[:, 1:])
  below = cum[:, lo]
  tied = cum[:, hi] - below
  return np.sum(cp * (below + 0.5 * tied), axis=1) / (p * q)


def paired_bootstrap_auc_diff(labels, scores_a, scores_b, n_resamples: int = 2000,
                              seed: int = 0, alpha: float = 0.05) -> dict:
  """Stratified, paired percentile bootstrap CI of auc_a - auc_b.

  scores_a, scores_b [N]. Positives and negatives are resampled separately
  (each resample keeps P positives and Q negatives, so both classes occur),
  and both models are scored on the same resampled images. Uses
  scipy.stats.bootstrap with the positive and negative indices as two
  independent samples; deterministic given seed.
  Returns dict(diff, lo, hi): diff on the original data (equals the DeLong diff).
  """
  alpha = _alpha(alpha)
  if int(n_resamples) < 1:
    raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
  y = _labels(labels)
  a = _scores(scores_a, y.shape[0], "scores_a")
  b = _scores(scores_b, y.shape[0], "scores_b")
  pos_idx = np.flatnonzero(y)
  neg_idx = np.flatnonzero(~y)
  p, q = pos_idx.size, neg_idx.size
  # Per model: positive scores, and negatives sorted once so each resample is a cumsum.
  models = []
  for s in (a, b):
    order = np.argsort(s[neg_idx], kind="mergesort")
    models.append((s[pos_idx], s[neg_idx][order], order))
  # Map an image index to its slot within its class.
  slot = np.empty(y.shape[0], dtype=np.intp)
  slot[pos_idx] = np.arange(p)
  slot[neg_idx] = np.arange(q)

  def counts(idx, size):
    # idx [..., K] image indices -> [B, size] multiplicities of each class slot.
    sl = slot[np.asarray(idx).astype(np.intp)].reshape(-1, np.shape(idx)[-1])
    nb = sl.shape[0]
    flat = sl + size * np.arange(nb)[:, None]
    return np.bincount(flat.ravel(), minlength=nb * size).reshape(nb, size).astype(np.float64)

  def statistic(pi, ni, axis=-1):
    batch_shape = np.shape(pi)[:-1]
    cp, cn = counts(pi, p), counts(ni, q)
    diff = 0.0
    for sign, (x_pos, ys_neg, order) in zip((1.0, -1.0), models):
      diff = diff + sign * _resampled_auc(x_pos, ys_neg, cp, cn[:, order])
    return np.reshape(diff, batch_shape)

  # Bound the per-call working set (B x N floats) for large test sets.
  batch = int(max(1, min(int(n_resamples), 20_000_000 // y.shape[0])))
  res = _st.bootstrap((pos_idx, neg_idx), statistic, n_resamples=int(n_resamples),
                      batch=batch, vectorized=True, paired=False, axis=-1,
                      confidence_level=1.0 - alpha, method="percentile",
                      rng=np.random.default_rng(seed))
  diff = float(statistic(pos_idx, neg_idx))
  return dict(diff=diff, lo=float(res.confidence_interval.low),
              hi=float(res.confidence_interval.high))


# ---------------------------------------------------------------- operating point


def threshold_at_specificity(labels, scores, specificity: float) -> float:
  """Threshold t on scores [N] reaching >= `specificity` with maximal sensitivity.

  Rule (positive = score >= t): let y_(1) <= ... <= y_(Q) be the sorted
  negative scores and k = ceil(specificity * Q). Specificity(t) =
  #{negatives < t} / Q is >= target exactly when t > y_(k), and sensitivity
  is non-increasing in t, so the best thresholds form (y_(k), s'] where s' is
  the next distinct score (any class) above y_(k). We return the midpoint
  (y_(k) + s') / 2, which classifies this sample exactly like any threshold
  in that interval and leaves margin on both sides for new data. If y_(k) is
  the largest score, return np.nextafter(y_(k), inf). If k == 0 (target 0),
  return -inf (everything positive). Choose t on training/validation data and
  apply it to test data with `sensitivity_specificity`.
  """
  y = _labels(labels)
  s = _scores(scores, y.shape[0])
  target = float(specificity)
  if not 0.0 <= target <= 1.0:
    raise ValueError(f"specificity must be in [0, 1], got {specificity}")
  neg = np.sort(s[~y])
  q = neg.size
  # The tolerance keeps e.g. 0.9 * 10 = 9.000000000000002 from needing 10 negatives.
  k = int(math.ceil(target * q - 1e-9))
  if k <= 0:
    return float("-inf")
  yk = neg[k - 1]
  above = s[s > yk]
  if above.size == 0:
    return float(np.nextafter(yk, np.inf))
  return float((yk + above.min()) / 2.0)


def sensitivity_specificity(labels, scores, threshold: float) -> dict:
  """Counts and rates at `threshold`, positive = score >= threshold. scores [N].

  Returns dict(sensitivity, specificity, tp, fn, tn, fp); the counts are ints.
  """
  y = _labels(labels)
  s = _scores(scores, y.shape[0])
  t = float(threshold)
  if math.isnan(t):
    raise ValueError("threshold must not be NaN")
  pred = s >= t
  tp = int(np.sum(pred & y))
  fn = int(np.sum(~pred & y))
  tn = int(np.sum(~pred & ~y))
  fp = int(np.sum(pred & ~y))
  return dict(sensitivity=tp / (tp + fn), specificity=tn / (tn + fp),
              tp=tp, fn=fn, tn=tn, fp=fp)


# ---------------------------------------------------------------- McNemar


def _booleans(x, name: str) -> np.ndarray:
  v = np.asarray(x)
  if v.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {v.shape}")
  if v.dtype == bool:
    return v
  if not np.issubdtype(v.dtype, np.number) or not np.all((v == 0) | (v == 1)):
    raise ValueError(f"{name} must be booleans (or 0/1)")
  return v == 1


def mcnemar(correct_a, correct_b) -> dict:
  """Exact McNemar test on paired correctness [N] of two classifiers on the same cases.

  b = #(a right, b wrong), c = #(a wrong, b right); p is the exact two-sided
  binomial p of b ~ Bin(b + c, 1/2) (p = 1 when b + c == 0). statistic =
  min(b, c), as in statsmodels' exact McNemar. To compare sensitivities, pass
  correctness on the positives only.
  Returns dict(b, c, p, statistic).
  """
  ca = _booleans(correct_a, "correct_a")
  cb = _booleans(correct_b, "correct_b")
  if ca.shape != cb.shape:
    raise ValueError(f"correct_a and correct_b differ in length: {ca.size} vs {cb.size}")
  b = int(np.sum(ca & ~cb))
  c = int(np.sum(~ca & cb))
  p = 1.0 if b + c == 0 else float(_st.binomtest(b, b + c, 0.5).pvalue)
  return dict(b=b, c=c, p=p, statistic=min(b, c))
