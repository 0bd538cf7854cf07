"""Metrics (Eq. 9-11, AUC, Jaccard) against sklearn and direct numpy code."""

import numpy as np
import pytest
from sklearn import metrics as skm

from rapool_jax import metrics


def _tied_problem(seed, n=300, levels=12):
  """Labels [n] (~20% positive) and scores [n] with many ties."""
  rng = np.random.default_rng(seed)
  labels = (rng.random(n) < 0.2).astype(np.int32)
  labels[:2] = [0, 1]  # Both classes, whatever the seed.
  scores = np.round(rng.normal(size=n) + labels, 0) / 2.0
  scores = np.clip(scores, -levels, levels).astype(np.float32)
  return labels, scores


def _rates(labels, scores, threshold):
  pred = scores >= threshold
  pos = labels == 1
  return pred[pos].mean(), (~pred[~pos]).mean()


@pytest.mark.parametrize('seed', range(5))
def test_auc_matches_sklearn_with_ties(seed):
  labels, scores = _tied_problem(seed)
  assert len(np.unique(scores)) < 20  # Ties really are there.
  assert metrics.roc_auc(labels, scores) == pytest.approx(
      skm.roc_auc_score(labels, scores), abs=1e-12)


def test_auc_is_the_mean_over_all_pairs_with_ties_half():
  # Independent of sklearn: every (positive, negative) pair, brute force.
  labels, scores = _tied_problem(7, n=120)
  x = scores[labels == 1][:, None]
  y = scores[labels == 0][None, :]
  want = np.mean((x > y) + 0.5 * (x == y))
  assert metrics.roc_auc(labels, scores) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize('seed', range(3))
def test_roc_curve_matches_sklearn(seed):
  labels, scores = _tied_problem(seed)
  fpr, tpr, thr = metrics.roc_curve(labels, scores)
  sk_fpr, sk_tpr, sk_thr = skm.roc_curve(labels, scores,
                                         drop_intermediate=False)
  np.testing.assert_allclose(fpr, sk_fpr)
  np.testing.assert_allclose(tpr, sk_tpr)
  np.testing.assert_array_equal(thr[1:], sk_thr[1:])
  assert thr[0] == np.inf


@pytest.mark.parametrize('threshold', [-0.5, 0.0, 0.25, 0.5, 10.0])
def test_classification_metrics_match_confusion_matrix(threshold):
  labels, scores = _tied_problem(0)
  got = metrics.classification_metrics(labels, scores, threshold)
  pred = (scores >= threshold).astype(int)
  tn, fp, fn, tp = skm.confusion_matrix(labels, pred, labels=[0, 1]).ravel()
  assert (got['tp'], got['fp'], got['tn'], got['fn']) == (tp, fp, tn, fn)
  assert got['sensitivity'] == pytest.approx(skm.recall_score(labels, pred))
  assert got['specificity'] == pytest.approx(tn / (tn + fp))
  assert got['accuracy'] == pytest.approx(skm.accuracy_score(labels, pred))
  assert got['auc'] == pytest.approx(skm.roc_auc_score(labels, scores))


@pytest.mark.parametrize('seed', range(4))
def test_youden_threshold_reaches_best_roc_point(seed):
  labels, scores = _tied_problem(seed)
  t = metrics.youden_threshold(labels, scores)
  sk_fpr, sk_tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
  sens, spec = _rates(labels, scores, t)
  assert sens + spec - 1 == pytest.approx(np.max(sk_tpr - sk_fpr), abs=1e-12)
  # Not on a score: between two distinct scores, or the lowest score.
  assert t not in set(scores.tolist()) or t == scores.min()


@pytest.mark.parametrize('target', [0.5, 0.884, 0.95, 1.0])
def test_threshold_at_specificity_maximises_sensitivity(target):
  labels, scores = _tied_problem(1)
  t = metrics.threshold_at_specificity(labels, scores, target)
  sens, spec = _rates(labels, scores, t)
  sk_fpr, sk_tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
  assert spec >= target
  assert sens == pytest.approx(np.max(sk_tpr[1 - sk_fpr >= target]))


def test_threshold_at_specificity_unreachable_is_inf():
  # A negative tied with a positive at the top: specificity 1 needs "none".
  labels = np.array([0, 1, 0, 1])
  scores = np.array([2.0, 2.0, 0.0, 1.0])
  assert metrics.threshold_at_specificity(labels, scores, 1.0) == np.inf


def test_threshold_at_specificity_hand_example():
  labels = np.array([0, 0, 0, 0, 1, 1, 1])
  scores = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.5, 0.6])
  # 3 of 4 negatives must be below t: t > 0.3; the next score is 0.35, and
  # the rule puts t midway.
  assert metrics.threshold_at_specificity(labels, scores, 0.75) == pytest.approx(0.325)
  assert metrics.threshold_at_specificity(labels, scores, 1.0) == pytest.approx(0.45)
  # Target 0: everything positive, at the lowest score.
  assert metrics.threshold_at_specificity(labels, scores, 0.0) == 0.1


def test_threshold_at_specificity_counts_negatives_not_rates():
  # 0.9 of 10 negatives allows exactly one false positive (0.9 * 10 is
  # 9.000000000000002 in floating point).
  labels = np.r_[np.zeros(10, int), np.ones(3, int)]
  scores = np.r_[np.arange(10.0), 8.5, 9.5, 10.5]
  t = metrics.threshold_at_specificity(labels, scores, 0.9)
  assert t == pytest.approx(8.25)  # the negative 9.0 is the one false positive
  assert _rates(labels, scores, t) == (1.0, 0.9)


@pytest.mark.parametrize('target', [0.8, 0.9, 0.95, 0.97])
def test_threshold_at_specificity_is_the_highest_sensitivity_point(target):
  labels, scores = _tied_problem(3, n=400)
  t = metrics.threshold_at_specificity(labels, scores, target)
  sens, spec = _rates(labels, scores, t)
  assert spec >= target
  # Brute force over every threshold that changes the classification.
  cands = np.r_[np.unique(scores), np.inf]
  best = max(_rates(labels, scores, c)[0] for c in cands
             if _rates(labels, scores, c)[1] >= target)
  assert sens == best
  # Down to the next lower score and the target is missed.
  below = scores[scores < t].max()
  assert _rates(labels, scores, below)[1] < target


def test_operating_point_hand_example_and_per_image_thresholds():
  labels = np.array([0, 0, 0, 0, 1, 1, 1])
  scores = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.5, 0.6])
  out = metrics.operating_point(labels, scores, 0.35)  # >= is positive
  assert out == dict(sensitivity=1.0, specificity=0.75, accuracy=6 / 7,
                     tp=3, fp=1, tn=3, fn=0)
  out = metrics.operating_point(labels, scores, 0.45)
  assert (out['sensitivity'], out['specificity']) == (2 / 3, 1.0)
  # One threshold per image, e.g. each fold's own.
  per_image = np.array([0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.7])
  out = metrics.operating_point(labels, scores, per_image)
  assert (out['tp'], out['fp'], out['tn'], out['fn']) == (1, 1, 3, 2)
  # Bool labels mean the same as 0/1.
  assert metrics.operating_point(labels == 1, scores, 0.45) == (
      metrics.operating_point(labels, scores, 0.45))


def _jaccard_loop(pred, true):
  out = []
  for p, t in zip(pred.astype(bool), true.astype(bool)):
    union = np.logical_or(p, t).sum()
    out.append(1.0 if union == 0 else np.logical_and(p, t).sum() / union)
  return np.array(out)


def test_jaccard_matches_direct_computation_with_empty_masks():
  rng = np.random.default_rng(0)
  pred = rng.random((6, 9, 7)) < 0.4
  true = rng.random((6, 9, 7)) < 0.5
  pred[0] = true[0] = False  # Both empty: 1 by definition.
  pred[1] = False  # Prediction empty only: 0.
  true[2] = pred[2]  # Perfect: 1.
  expected = _jaccard_loop(pred, true)
  assert expected[0] == 1.0 and expected[1] == 0.0 and expected[2] == 1.0
  np.testing.assert_allclose(metrics.jaccard_per_image(pred, true), expected)
  # 0/1 and 0/255 integer masks mean the same.
  np.testing.assert_allclose(metrics.jaccard_per_image(
      pred.astype(np.uint8) * 255, true.astype(np.int32)), expected)


@pytest.mark.parametrize('call', [
    lambda: metrics.roc_auc([0, 1, 1], [0.1, 0.2]),
    lambda: metrics.classification_metrics(np.ones(4), np.arange(4.0), 1.0),
    lambda: metrics.roc_auc([0, 0, 0], [0.1, 0.2, 0.3]),
    lambda: metrics.youden_threshold([1, 1], [0.1, 0.2]),
    lambda: metrics.roc_auc([0, 2, 1], [0.1, 0.2, 0.3]),
    lambda: metrics.threshold_at_specificity([0, 1], [0.1, 0.2], 1.5),
    lambda: metrics.roc_auc(['a', 'b'], [0.1, 0.2]),
    lambda: metrics.roc_auc([0, 1, 1], [0.1, np.inf, 0.3]),
    lambda: metrics.operating_point([0, 1, 0], [0.1, 0.2, 0.3], [0.1, 0.2]),
    lambda: metrics.operating_point([0, 1], [0.1, 0.2], np.nan),
    lambda: metrics.jaccard_per_image(np.zeros((2, 3, 3)), np.zeros((2, 3, 4))),
    lambda: metrics.jaccard_per_image(np.zeros((3, 3)), np.zeros((3, 3))),
])
def test_bad_inputs_raise_value_error(call):
  with pytest.raises(ValueError):
    call()


def test_single_class_message_is_clear():
  with pytest.raises(ValueError, match='needs both classes'):
    metrics.roc_auc(np.zeros(5), np.arange(5.0))
