"""Linear classifiers on pooled features: the baselines RankOpt is compared to.

``fit_logistic_regression``: L2-regularised logistic regression with
"balanced" class weights (each class carries half the loss, as sklearn's
``class_weight="balanced"``), fitted by L-BFGS (optax) in one jitted loop on
features standardised with training statistics, like ``rankopt.fit``. The
objective is

    sum_i c_i log(1 + exp(-y_i (x_i . w + b))) / sum_i c_i + l2/2 ||w||^2,

y in {-1, +1}, the bias unpenalised; it equals sklearn's
``LogisticRegression(C=1 / (l2 * N), class_weight="balanced")`` up to a
constant factor, so the two give the same weights (tested).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from rapool_jax import metrics
from rapool_jax import rankopt


class LogisticModel(NamedTuple):
  """``w [D]``, ``b`` in standardised feature space; ``mean, std [D]``."""
  w: jax.Array
  b: jax.Array
  mean: jax.Array
  std: jax.Array
  l2: float
  num_steps: int


@functools.partial(jax.jit, static_argnames=("max_steps",))
def _fit_core(x, y, c, l2, *, max_steps, tol):
  """L-BFGS on the objective of the module docstring; returns (w, b, steps)."""
  sign = 2.0 * y - 1.0
  c = c / jnp.sum(c)

  def loss(params):
    z = x @ params["w"] + params["b"]
    return (jnp.sum(c * jax.nn.softplus(-sign * z)) +
            0.5 * l2 * jnp.sum(jnp.square(params["w"])))

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad,
                                value_fn=loss)
    return optax.apply_updates(params, updates), state

  def keep_going(carry):
    _, state = carry
    count = otu.tree_get(state, "count")
    grad_norm = otu.tree_norm(otu.tree_get(state, "grad"))
    return (count == 0) | ((count < max_steps) & (grad_norm >= tol))

  params = {"w": jnp.zeros(x.shape[1], jnp.float32),
            "b": jnp.zeros((), jnp.float32)}
  params, state = jax.lax.while_loop(keep_going, step,
                                     (params, opt.init(params)))
  return params["w"], params["b"], otu.tree_get(state, "count")


def fit_logistic_regression(features, labels, *, l2: float = 1e-2,
                            max_steps: int = 500,
                            tol: float = 1e-6) -> LogisticModel:
  """Fits ``features [N, D]``, ``labels [N]`` in {0, 1}. Deterministic."""
  x = jnp.asarray(features, jnp.float32)
  labels = np.asarray(labels)
  if x.ndim != 2 or labels.shape != (x.shape[0],):
    raise ValueError(f"Expected features [N, D] and labels [N], got {x.shape} "
                     f"and {labels.shape}.")
  if not np.all((labels == 0) | (labels == 1)) or labels.min() == labels.max():
    raise ValueError("labels must be 0/1 with both classes present.")
  mean = jnp.mean(x, axis=0)
  std = jnp.std(x, axis=0)
  # rankopt's floor: constant features get a finite standardisation.
  std = jnp.maximum(std, rankopt.STD_FLOOR * jnp.maximum(jnp.mean(std), 1e-30))
  # Balanced: N / (2 * the example's class count).
  counts = np.where(labels == 1, labels.sum(), labels.size - labels.sum())
  w, b, steps = _fit_core(
      (x - mean) / std, jnp.asarray(labels, jnp.float32),
      jnp.asarray((labels.size / (2.0 * counts)).astype(np.float32)),
      jnp.float32(l2), max_steps=int(max_steps), tol=float(tol))
  return LogisticModel(w, b, mean, std, float(l2), int(steps))


def decision_function(model: LogisticModel, features) -> jax.Array:
  """Logits ``[N]`` (monotone in the probability, so same AUC)."""
  x = (jnp.asarray(features, jnp.float32) - model.mean) / model.std
  return x @ model.w + model.b


def predict_proba(model: LogisticModel, features) -> jax.Array:
  """P(positive) ``[N]``."""
  return jax.nn.sigmoid(decision_function(model, features))


def select_l2(train_features, train_labels, val_features, val_labels,
              grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
              ) -> tuple[LogisticModel, dict[float, float]]:
  """Fits one model per ``l2`` in ``grid``; keeps the best validation AUC.

  Ties go to the larger ``l2`` (the simpler model). Returns the model and
  ``{l2: validation AUC}``.
  """
  best, table = None, {}
  for l2 in sorted(grid, reverse=True):
    model = fit_logistic_regression(train_features, train_labels, l2=l2)
    auc = metrics.roc_auc(val_labels,
                          np.asarray(decision_function(model, val_features)))
    table[float(l2)] = auc
    if best is None or auc > table[best.l2]:
      best = model
  return best, table
