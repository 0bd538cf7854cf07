"""The logistic-regression baseline: sklearn's fit is the per-example
objective of ``linear_baselines``' docstring, whose ``l2`` the validation
split chooses."""

import numpy as np
import pytest
from scipy import optimize
from scipy import special

from rapool_jax import linear_baselines


def _toy(n=300, d=20, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, size=d) + rng.normal(size=d)
  y = (x[:, 0] + 0.5 * x[:, 1] + 1.5 * rng.normal(size=n) > 2.5).astype(int)
  return x.astype(np.float32), y


def _minimise_documented_objective(xs, y, l2):
  """``sum_i c_i softplus(-s_i z_i) / N + l2/2 ||w||^2``, c balanced, by
  scipy: the objective the replaced jax fit minimised."""
  sign = 2.0 * y - 1.0
  c = len(y) / (2.0 * np.where(y == 1, y.sum(), len(y) - y.sum()))

  def f(params):
    w, b = params[:-1], params[-1]
    z = xs @ w + b
    g = -sign * special.expit(-sign * z) * c / len(y)
    return (np.sum(c * np.logaddexp(0, -sign * z)) / len(y)
            + 0.5 * l2 * w @ w, np.append(xs.T @ g + l2 * w, g.sum()))

  out = optimize.minimize(f, np.zeros(xs.shape[1] + 1), jac=True,
                          method="L-BFGS-B", options=dict(gtol=1e-12,
                                                          maxiter=10_000))
  return out.x[:-1], out.x[-1]


@pytest.mark.parametrize("l2", [1e-3, 1e-1])
def test_fit_minimises_the_per_example_objective(l2):
  x, y = _toy()
  # Imbalanced (about 1 in 5 positive): the class weights matter.
  assert 0.1 < y.mean() < 0.3
  model = linear_baselines.fit_logistic_regression(x, y, l2=l2)
  xs = (x - model.mean) / model.std
  w, b = _minimise_documented_objective(xs.astype(np.float64), y, l2)
  np.testing.assert_allclose(model.w, w, atol=1e-4)
  np.testing.assert_allclose(model.b, b, atol=1e-4)
  np.testing.assert_allclose(linear_baselines.predict_proba(model, x),
                             special.expit(xs @ w + b), atol=1e-4)


def test_a_constant_feature_gets_no_weight():
  x, y = _toy()
  x[:, 3] = 2.0
  model = linear_baselines.fit_logistic_regression(x, y, l2=1e-2)
  assert np.isfinite(model.std).all() and abs(model.w[3]) < 1e-8
  assert np.isfinite(linear_baselines.decision_function(model, x)).all()


def test_select_l2_picks_by_validation_auc():
  x, y = _toy(seed=1)
  model, aucs = linear_baselines.select_l2(x[:200], y[:200], x[200:], y[200:],
                                           (1e-3, 10.0))
  assert set(aucs) == {1e-3, 10.0}
  assert aucs[model.l2] == max(aucs.values())
  with pytest.raises(ValueError, match="both classes"):
    linear_baselines.fit_logistic_regression(x, np.zeros(len(x)))
