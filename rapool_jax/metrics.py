"""Metrics: sensitivity, specificity, accuracy (Eq. 9-11), AUC, Jaccard.

The project's one AUC and one threshold rule (``rankopt`` keeps its own
jit-able AUC for the objective it optimises). Host-side numpy in float64;
inputs may be numpy or jax arrays. Labels ``[N]`` in {0, 1} (or bool), 1 =
melanoma; scores ``[N]`` finite, higher means more likely positive; an image
is predicted positive iff ``score >= threshold``. AUC is the Mann-Whitney
probability P(score_pos > score_neg), ties counted 1/2 (scikit-learn's).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from sklearn import metrics as sk_metrics


def as_labels_scores(labels, scores, name: str = "scores"):
  """Validates ``labels [N]`` and ``scores [N]`` (or ``[M, N]``: M models on
  the same images) -> (bool [N], float64 of scores' shape).

  The package's one input check for labelled scores. Raises ValueError
  naming what is wrong: shapes, labels other than 0/1, non-finite scores, a
  missing class.
  """
  y = np.asarray(labels)
  s = np.asarray(scores)
  if y.ndim != 1 or s.ndim not in (1, 2) or s.shape[-1] != y.shape[0]:
    raise ValueError(f"labels [N] and {name} [N] (or [M, N]) must match, got "
                     f"shapes {y.shape} and {s.shape}")
  if not (y.dtype == bool or np.issubdtype(y.dtype, np.number)) or not np.all(
      (y == 0) | (y == 1)):
    raise ValueError("labels must be 0/1 (or bool)")
  if not (s.dtype == bool or np.issubdtype(s.dtype, np.number)):
    raise ValueError(f"{name} must be numeric, got dtype {s.dtype}")
  s = s.astype(np.float64)
  if not np.all(np.isfinite(s)):
    raise ValueError(f"{name} must be finite (found NaN or inf)")
  y = y.astype(bool)
  n_pos = int(y.sum())
  if n_pos == 0 or n_pos == y.size:
    raise ValueError(f"needs both classes, got {n_pos} positives out of "
                     f"{y.size} labels")
  return y, s


def roc_auc(labels, scores) -> float:
  """AUC, ties counted 1/2 (Mann-Whitney U / (P Q)). ``[N], [N]`` -> float."""
  return float(sk_metrics.roc_auc_score(*as_labels_scores(labels, scores)))


def roc_curve(labels, scores):
  """ROC points: ``sklearn.metrics.roc_curve(drop_intermediate=False)``.

  Returns (fpr, tpr, thresholds), each ``[K + 1]`` for K distinct scores:
  thresholds are ``inf`` followed by the distinct scores in decreasing order,
  and point k is the rate of ``scores >= thresholds[k]``.
  """
  y, s = as_labels_scores(labels, scores)
  return sk_metrics.roc_curve(y, s, drop_intermediate=False)


def _between(distinct_desc, k: int) -> float:
  """Threshold selecting ``scores >= distinct_desc[k]``: midway down to the
  next lower score (on the lowest score for the last k), so that it
  reproduces the operating point on the data it was fitted on and new data
  near it are not decided by a tie."""
  upper = float(distinct_desc[k])
  if k + 1 >= distinct_desc.size:
    return upper
  lower = float(distinct_desc[k + 1])
  mid = 0.5 * (upper + lower)
  # Guards overflow and adjacent doubles where the midpoint rounds onto lower.
  return mid if lower < mid <= upper and np.isfinite(mid) else upper


def youden_threshold(labels, scores) -> float:
  """Threshold maximising Youden's J = sensitivity + specificity - 1.

  Among equally good operating points the highest threshold wins (fewest
  positive calls). ``[N], [N]`` -> float.
  """
  fpr, tpr, thresholds = roc_curve(labels, scores)
  # Point 0 (threshold inf, nothing positive) is not a candidate.
  return _between(thresholds[1:], int(np.argmax(tpr[1:] - fpr[1:])))


def threshold_at_specificity(labels, scores, specificity: float) -> float:
  """The project's rule for a threshold at a target specificity.

  Rule: the maximal-sensitivity operating point whose specificity on
  (labels, scores) is at least ``specificity`` (the Neyman-Pearson point the
  paper's Table 3 fixes), i.e. at most floor((1 - specificity) Q) of the Q
  negatives called positive; the threshold lies midway between the lowest
  score called positive and the next lower score. Why: among all thresholds
  giving that operating point, the midpoint classifies the fitting data
  exactly and leaves equal margin for new data, where a threshold on a score
  would flip with any tie. Edge cases: ``inf`` when only "all negative"
  reaches the target (e.g. 1.0 with a negative at the top score); the lowest
  score when everything may be positive (target 0). Fit it on training or
  validation data, never on the data it is applied to. ``[N], [N]`` -> float.
  """
  if not 0.0 <= specificity <= 1.0:
    raise ValueError(f"specificity must lie in [0, 1], got {specificity}")
  y, s = as_labels_scores(labels, scores)
  fpr, _, thresholds = sk_metrics.roc_curve(y, s, drop_intermediate=False)
  n_neg = int((~y).sum())
  # Counts, not rates, so that e.g. 0.9 of 10 negatives allows exactly one
  # false positive despite 0.9 * 10 rounding to 9.000000000000002.
  allowed = math.floor((1.0 - specificity) * n_neg + 1e-9)
  ok = np.nonzero(np.rint(fpr[1:] * n_neg) <= allowed)[0]
  return _between(thresholds[1:], int(ok[-1])) if ok.size else float("inf")


def operating_point(labels, scores, threshold) -> dict:
  """Eq. 9-11 at ``scores >= threshold``; ``threshold`` a float or ``[N]``
  (one per image, e.g. each fold's own). Needs both classes.

  Returns dict(sensitivity, specificity, accuracy, tp, fp, tn, fn); the
  counts are ints.
  """
  pos, s = as_labels_scores(labels, scores)
  t = np.asarray(threshold, dtype=np.float64)
  if t.ndim not in (0, 1) or (t.ndim == 1 and t.shape != s.shape):
    raise ValueError(f"threshold must be a number or [N] = {s.shape}, got "
                     f"shape {t.shape}")
  if np.isnan(t).any():
    raise ValueError("threshold must not be NaN")
  pred = s >= t
  tp, fp = int(np.sum(pred & pos)), int(np.sum(pred & ~pos))
  tn, fn = int(np.sum(~pred & ~pos)), int(np.sum(~pred & pos))
  return {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp),
          "accuracy": (tp + tn) / pos.size,
          "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def classification_metrics(labels, scores, threshold: float) -> dict:
  """``operating_point`` at a float ``threshold``, plus ``auc`` and
  ``threshold``. ``[N], [N]`` -> dict."""
  return {**operating_point(labels, scores, float(threshold)),
          "auc": roc_auc(labels, scores), "threshold": float(threshold)}


def jaccard_per_image(pred_masks, true_masks) -> np.ndarray:
  """Jaccard index |A n B| / |A u B| per image, 1.0 where both are empty; the
  ISIC 2017 score is its mean.

  Masks ``[N, H, W]``, bool or 0/1 (any nonzero counts as lesion) -> ``[N]``.
  """
  pred, true = np.asarray(pred_masks), np.asarray(true_masks)
  if pred.shape != true.shape or pred.ndim != 3:
    raise ValueError(
        "pred_masks and true_masks must both be [N, H, W] of equal shape, got "
        f"{pred.shape} and {true.shape}.")
  pred, true = pred.astype(bool), true.astype(bool)
  inter = np.sum(pred & true, axis=(1, 2), dtype=np.int64)
  union = np.sum(pred | true, axis=(1, 2), dtype=np.int64)
  return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def cam_energy_inside(cams, masks) -> np.ndarray:
  """``[B]``: the share of positive CAM energy that lies inside the lesion
  (the energy-based pointing game), NaN where a CAM has no positive part.

  ``cams [B, h, w]``, ``masks [B, H, W]`` (> 0 inside): each CAM cell's
  energy is spread evenly over the pixels it covers, i.e. the mask is
  area-averaged down to the CAM's grid, so no interpolation is chosen.
  """
  cams = np.maximum(np.asarray(cams, np.float64), 0)
  masks = np.asarray(masks) > 0
  if cams.ndim != 3 or masks.ndim != 3 or len(cams) != len(masks):
    raise ValueError(f"cams [B, h, w] and masks [B, H, W] must match, got "
                     f"{cams.shape} and {masks.shape}")
  h, w = cams.shape[1:]
  share = np.stack([cv2.resize(m.astype(np.float32), (w, h),
                               interpolation=cv2.INTER_AREA) for m in masks])
  total = cams.sum((1, 2))
  inside = (cams * share).sum((1, 2))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 0, inside / total, np.nan)
