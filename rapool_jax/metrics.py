"""Metrics: sensitivity, specificity, accuracy (Eq. 9-11), AUC, Jaccard.

Host-side numpy in float64: these run once per evaluation on a few thousand
scores, so exactness (ties, counts) matters more than speed. Inputs may be
numpy or jax arrays. Conventions:

* labels ``[N]`` in {0, 1}, 1 = melanoma (positive); scores ``[N]``, higher
  means more likely positive; an image is predicted positive iff
  ``score >= threshold``.
* AUC counts tied (positive, negative) pairs as 1/2, exactly as
  ``sklearn.metrics.roc_auc_score`` does; computed from mid-ranks in
  O(N log N), never from the P x Q pair matrix.
* Thresholds returned by ``youden_threshold`` / ``threshold_at_specificity``
  are python floats strictly between two adjacent distinct scores (or equal
  to the lowest score), so ``scores >= t`` reproduces the chosen operating
  point on the data they were fitted on and is not on a knife's edge for new
  data.
"""

from __future__ import annotations

import numpy as np


def _as_labels_scores(labels, scores):
  """Validates and converts to (bool [N], float64 [N])."""
  labels = np.asarray(labels)
  scores = np.asarray(scores, dtype=np.float64)
  if labels.ndim != 1 or scores.ndim != 1 or labels.shape != scores.shape:
    raise ValueError(
        'labels and scores must be 1-d of equal length, got shapes '
        f'{labels.shape} and {scores.shape}.')
  if labels.size and not np.all((labels == 0) | (labels == 1)):
    raise ValueError('labels must be 0/1 (1 = positive).')
  if np.isnan(scores).any():
    raise ValueError('scores contain NaN.')
  return labels.astype(bool), scores


def _require_both_classes(pos):
  n_pos = int(pos.sum())
  if n_pos == 0 or n_pos == pos.size:
    raise ValueError(
        f'AUC/ROC needs both classes, got {n_pos} positives out of {pos.size}.')


def roc_auc(labels, scores) -> float:
  """AUC, ties counted 1/2 (Mann-Whitney U / (P Q)). ``[N], [N]`` -> float."""
  pos, scores = _as_labels_scores(labels, scores)
  _require_both_classes(pos)
  # Mid-ranks (1-based): a tie group occupying ranks a..b gets (a + b) / 2.
  _, inverse, counts = np.unique(
      scores, return_inverse=True, return_counts=True)
  upper = np.cumsum(counts)
  midrank = (upper - (counts - 1) / 2.0)[inverse]
  n_pos = float(pos.sum())
  n_neg = float(pos.size) - n_pos
  u = midrank[pos].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def roc_curve(labels, scores):
  """ROC points, like ``sklearn.metrics.roc_curve(drop_intermediate=False)``.

  Returns (fpr, tpr, thresholds), each ``[K + 1]`` for K distinct scores:
  thresholds are ``inf`` followed by the distinct scores in decreasing order,
  and point k is the rate of ``scores >= thresholds[k]``.
  """
  pos, scores = _as_labels_scores(labels, scores)
  _require_both_classes(pos)
  tps, fps, thresholds = _cumulative_counts(pos, scores)
  fpr = np.concatenate([[0.0], fps / fps[-1]])
  tpr = np.concatenate([[0.0], tps / tps[-1]])
  return fpr, tpr, np.concatenate([[np.inf], thresholds])


def _cumulative_counts(pos, scores):
  """(tps [K], fps [K], distinct scores decreasing [K]) for ``scores >= t``."""
  order = np.argsort(-scores, kind='stable')
  s = scores[order]
  p = pos[order]
  # Last index of each tie group: counts there include the whole group.
  last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
  tps = np.cumsum(p)[last].astype(np.float64)
  fps = (last + 1) - tps
  return tps, fps, s[last]


def _between(distinct_desc, k):
  """Threshold selecting ``scores >= distinct_desc[k]`` with a margin below."""
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
  pos, scores = _as_labels_scores(labels, scores)
  _require_both_classes(pos)
  tps, fps, distinct = _cumulative_counts(pos, scores)
  j = tps / tps[-1] - fps / fps[-1]
  return _between(distinct, int(np.argmax(j)))


def threshold_at_specificity(labels, scores, specificity: float) -> float:
  """Lowest threshold (max sensitivity) whose specificity is >= ``specificity``.

  Returns ``inf`` when only "all negative" reaches it (e.g. 1.0 with a
  negative tied at the top score). ``[N], [N]`` -> float.
  """
  if not 0.0 <= specificity <= 1.0:
    raise ValueError(f'specificity must lie in [0, 1], got {specificity}.')
  pos, scores = _as_labels_scores(labels, scores)
  _require_both_classes(pos)
  _, fps, distinct = _cumulative_counts(pos, scores)
  spec = 1.0 - fps / fps[-1]
  # spec is non-increasing along decreasing thresholds; allow float slack so
  # that e.g. 0.884 is met by 0.88400000001 computed from counts.
  ok = np.nonzero(spec >= specificity - 1e-12)[0]
  if ok.size == 0:
    return float('inf')
  return _between(distinct, int(ok[-1]))


def classification_metrics(labels, scores, threshold: float) -> dict:
  """Eq. 9-11 at ``scores >= threshold``, plus AUC. ``[N], [N]`` -> dict.

  Keys: sensitivity, specificity, accuracy, auc, threshold, and the counts
  tp, fp, tn, fn (ints). Needs both classes (for AUC).
  """
  pos, s = _as_labels_scores(labels, scores)
  auc = roc_auc(pos, s)
  pred = s >= threshold
  tp = int(np.sum(pred & pos))
  fp = int(np.sum(pred & ~pos))
  tn = int(np.sum(~pred & ~pos))
  fn = int(np.sum(~pred & pos))
  return {
      'sensitivity': tp / (tp + fn),
      'specificity': tn / (tn + fp),
      'accuracy': (tp + tn) / pos.size,
      'auc': auc,
      'threshold': float(threshold),
      'tp': tp, 'fp': fp, 'tn': tn, 'fn': fn,
  }


def jaccard_per_image(pred_masks, true_masks) -> np.ndarray:
  """Jaccard index |A n B| / |A u B| per image, 1.0 where both are empty.

  Masks ``[N, H, W]``, bool or 0/1 (any nonzero counts as lesion) -> ``[N]``.
  """
  pred = np.asarray(pred_masks)
  true = np.asarray(true_masks)
  if pred.shape != true.shape or pred.ndim != 3:
    raise ValueError(
        'pred_masks and true_masks must both be [N, H, W] of equal shape, got '
        f'{pred.shape} and {true.shape}.')
  pred = pred.astype(bool)
  true = true.astype(bool)
  inter = np.sum(pred & true, axis=(1, 2), dtype=np.int64)
  union = np.sum(pred | true, axis=(1, 2), dtype=np.int64)
  return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def jaccard(pred_masks, true_masks) -> float:
  """ISIC 2017 score: mean per-image Jaccard. 2x ``[N, H, W]`` -> float."""
  per_image = jaccard_per_image(pred_masks, true_masks)
  if per_image.size == 0:
    raise ValueError('jaccard needs at least one image.')
  return float(per_image.mean())
