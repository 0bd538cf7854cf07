"""RankOpt (Eq. 4-8) against the equations written out in plain numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from rapool_jax import metrics
from rapool_jax import rankopt


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _eq6_and_eq8(beta, x_pos, x_neg):
  """R (Eq. 6) and dR/dbeta (Eq. 8) by the double sum, in float64."""
  beta, x_pos, x_neg = (np.asarray(a, np.float64) for a in (beta, x_pos, x_neg))
  r, grad = 0.0, np.zeros_like(beta)
  for xi in x_pos:
    for xj in x_neg:
      s = _sigmoid(beta @ (xi - xj))
      r += s
      grad += s * (1 - s) * (xi - xj)
  n = len(x_pos) * len(x_neg)
  return r / n, grad / n


def _small(seed=0, p=7, q=5, d=4):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=d).astype(np.float32),
          rng.normal(size=(p, d)).astype(np.float32) + 0.3,
          rng.normal(size=(q, d)).astype(np.float32))


def _imbalanced(seed=0, n=600, d=64, n_outliers=6):
  """~19% positives along a hidden direction; a few far-away negatives."""
  rng = np.random.default_rng(seed)
  labels = (rng.random(n) < 0.19).astype(np.int32)
  w = rng.normal(size=d)
  w /= np.linalg.norm(w)
  x = rng.normal(size=(n, d)) + 1.5 * np.outer(labels, w)
  # Outlying negatives far out on the positive side: they dominate a convex
  # loss but cost a bounded rank statistic at most their pairs.
  x[np.flatnonzero(labels == 0)[:n_outliers]] += 40.0 * w
  return x.astype(np.float32), labels


@pytest.fixture(scope='module')
def imbalanced():
  return _imbalanced()


@pytest.fixture(scope='module')
def fitted(imbalanced):
  x, y = imbalanced
  return rankopt.fit(x, y)


@pytest.mark.parametrize('chunk_size', [1, 2, 3, 7, 100])
def test_rank_statistic_and_grad_are_eq6_and_eq8(chunk_size):
  beta, x_pos, x_neg = _small()  # P = 7: chunks of 2 and 3 leave a remainder.
  r_ref, g_ref = _eq6_and_eq8(beta, x_pos, x_neg)
  r, g = jax.value_and_grad(rankopt.rank_statistic)(
      jnp.asarray(beta), x_pos, x_neg, chunk_size)
  np.testing.assert_allclose(r, r_ref, rtol=1e-6)
  np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7)
  # Same under jit, where the chunk size must stay static.
  jitted = jax.jit(jax.grad(rankopt.rank_statistic), static_argnums=3)
  np.testing.assert_allclose(jitted(beta, x_pos, x_neg, chunk_size), g_ref,
                             rtol=1e-5, atol=1e-7)


def test_rank_statistic_saturated_scores_stay_finite():
  beta, x_pos, x_neg = _small(1)
  r, g = jax.value_and_grad(rankopt.rank_statistic)(1e4 * beta, x_pos, x_neg)
  assert np.isfinite(r) and np.all(np.isfinite(g))
  np.testing.assert_allclose(r, rankopt.exact_auc(beta, x_pos, x_neg),
                             atol=1e-6)


def test_exact_auc_matches_sklearn_with_ties():
  rng = np.random.default_rng(0)
  # Small integer features and weights: many exactly tied scores.
  x = rng.integers(0, 3, size=(200, 3)).astype(np.float32)
  y = (rng.random(200) < 0.3).astype(np.int32)
  x[y == 1, 0] += 1
  beta = np.array([1.0, 1.0, 0.0], np.float32)
  scores = x @ beta
  assert len(np.unique(scores)) < 10
  got = rankopt.exact_auc(beta, x[y == 1], x[y == 0])
  assert float(got) == pytest.approx(roc_auc_score(y, scores), abs=1e-6)


def test_rank_statistic_approaches_auc_as_radius_grows():
  x, y = _imbalanced(1, n=300, d=8, n_outliers=0)
  x_pos, x_neg = x[y == 1], x[y == 0]
  u = np.mean(x_pos, 0) - np.mean(x_neg, 0)
  u /= np.linalg.norm(u)
  auc = float(rankopt.exact_auc(u, x_pos, x_neg))
  gaps = [abs(float(rankopt.rank_statistic(b * u, x_pos, x_neg)) - auc)
          for b in (1.0, 10.0, 100.0, 1000.0)]
  assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
  assert gaps[-1] < 1e-3


def test_fit_stays_on_sphere(fitted, imbalanced):
  assert float(jnp.linalg.norm(fitted.beta)) == pytest.approx(
      fitted.radius, rel=1e-5)
  x, y = imbalanced
  given = rankopt.fit(x, y, radius=50.0, max_steps=20)
  assert given.radius == 50.0
  assert float(jnp.linalg.norm(given.beta)) == pytest.approx(50.0, rel=1e-5)


def test_fit_beats_balanced_logistic_regression_on_training_auc(
    fitted, imbalanced):
  x, y = imbalanced
  rank_auc = roc_auc_score(y, rankopt.decision_function(fitted, x))
  logreg = LogisticRegression(class_weight='balanced', max_iter=5000).fit(x, y)
  logreg_auc = roc_auc_score(y, logreg.decision_function(x))
  assert rank_auc >= logreg_auc, (rank_auc, logreg_auc)
  # The history's AUC is that of the returned beta.
  assert fitted.auc_history[fitted.num_steps - 1] == pytest.approx(
      rank_auc, abs=1e-5)


def test_fit_is_deterministic_and_ascends(fitted, imbalanced):
  x, y = imbalanced
  again = rankopt.fit(x, y)
  np.testing.assert_array_equal(fitted.beta, again.beta)
  assert fitted.threshold == again.threshold

  k = fitted.num_steps
  assert fitted.converged and 1 <= k < 300
  hist = np.asarray(fitted.r_history)
  assert np.all(np.diff(hist[:k]) >= 0)
  assert np.all(np.isnan(hist[k:])) and np.all(np.isnan(fitted.auc_history[k:]))
  # Initial R: the standardised class-mean difference scaled to B.
  z = (x - fitted.mean) / fitted.std
  u0 = z[y == 1].mean(0) - z[y == 0].mean(0)
  beta0 = fitted.radius * u0 / np.linalg.norm(u0)
  r0 = float(rankopt.rank_statistic(beta0, z[y == 1], z[y == 0]))
  r_final = float(rankopt.rank_statistic(fitted.beta, z[y == 1], z[y == 0]))
  assert r_final == pytest.approx(hist[k - 1], abs=1e-5)
  assert r_final > r0 + 1e-3


def test_fit_objective_is_rank_statistic(imbalanced):
  x, y = imbalanced
  x = jnp.asarray(x[:100])
  y = y[:100]
  beta = jnp.asarray(np.random.default_rng(0).normal(size=x.shape[1]),
                     jnp.float32)
  pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
  (r, _), g = jax.value_and_grad(rankopt._class_statistic, has_aux=True)(
      beta, x, pos, neg, 16)
  r_ref, g_ref = jax.value_and_grad(rankopt.rank_statistic)(
      beta, x[pos], x[neg], 16)
  np.testing.assert_allclose(r, r_ref, rtol=1e-6)
  np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7)


def test_threshold_and_decision_function(fitted, imbalanced):
  x, y = imbalanced
  scores = jax.jit(rankopt.decision_function)(fitted, x)
  assert scores.shape == (x.shape[0],) and scores.dtype == jnp.float32
  np.testing.assert_allclose(
      scores, ((x - fitted.mean) / fitted.std) @ fitted.beta, rtol=1e-4,
      atol=1e-4)
  assert fitted.threshold == metrics.youden_threshold(y, np.asarray(scores))
  held_out_x, held_out_y = _imbalanced(2, n=200)
  other = rankopt.fit(x, y, threshold_features=held_out_x,
                      threshold_labels=held_out_y)
  assert other.threshold == metrics.youden_threshold(
      held_out_y, np.asarray(rankopt.decision_function(other, held_out_x)))


def test_fit_stops_at_max_steps(imbalanced):
  x, y = imbalanced
  res = rankopt.fit(x, y, max_steps=3, tol=0.0)
  assert res.num_steps == 3 and not res.converged
  assert res.r_history.shape == (3,) and not np.any(np.isnan(res.r_history))


@pytest.mark.parametrize('labels', [np.zeros(10), np.array([0, 1] * 4),
                                    np.array([0, 1, 2, 1, 0, 1, 0, 1, 0, 0])])
def test_fit_rejects_bad_labels(labels):
  with pytest.raises(ValueError):
    rankopt.fit(np.zeros((10, 3), np.float32), labels)


def test_fit_finds_the_optimum_of_a_brute_force_angle_scan_in_2d():
  # In 2-D the sphere ||beta|| = B is a circle: R(beta) on a fine grid of
  # angles is the answer Eq. 7 asks for. The classes are skewed and
  # correlated, so the optimum is not the mean difference the fit starts near.
  rng = np.random.default_rng(3)
  x_pos = rng.normal(size=(60, 2)) @ np.array([[1.0, 0.8], [0.0, 0.4]]) + [1.0, 0.2]
  x_neg = rng.normal(size=(140, 2)) @ np.array([[0.5, 0.0], [0.6, 1.5]])
  x = np.concatenate([x_pos, x_neg]).astype(np.float32)
  y = np.r_[np.ones(60), np.zeros(140)].astype(np.int32)
  result = rankopt.fit(x, y, radius=4.0, max_steps=300, tol=1e-9)
  z = (x - np.asarray(result.mean)) / np.asarray(result.std)
  angles = np.linspace(-np.pi, np.pi, 7201)
  betas = 4.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
  s_pos, s_neg = z[y == 1] @ betas.T, z[y == 0] @ betas.T   # [P, A], [Q, A]
  r_scan = np.concatenate([  # Eq. 6 per angle, in blocks of angles
      _sigmoid(s_pos[:, None, a:a + 400] - s_neg[None, :, a:a + 400]).mean((0, 1))
      for a in range(0, len(angles), 400)])
  best = angles[np.argmax(r_scan)]
  fitted = np.arctan2(float(result.beta[1]), float(result.beta[0]))
  r_fit = _eq6_and_eq8(np.asarray(result.beta), z[y == 1], z[y == 0])[0]
  assert np.linalg.norm(result.beta) == pytest.approx(4.0, rel=1e-5)
  assert r_fit >= r_scan.max() - 1e-5, (r_fit, r_scan.max())
  assert abs(np.angle(np.exp(1j * (fitted - best)))) < np.radians(0.5)
  # Not a trivial case: the mean-difference direction is measurably worse.
  mean_diff = z[y == 1].mean(0) - z[y == 0].mean(0)
  r_mean = _eq6_and_eq8(4.0 * mean_diff / np.linalg.norm(mean_diff),
                        z[y == 1], z[y == 0])[0]
  assert r_scan.max() - r_mean > 1e-3, (r_scan.max(), r_mean)
