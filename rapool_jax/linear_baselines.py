"""Linear classifiers on pooled features: the baselines RankOpt is compared to.

``fit_logistic_regression``: scikit-learn's ``LogisticRegression`` with
``class_weight="balanced"`` (each class carries half the loss), on features
standardised with training statistics as ``rankopt.fit`` standardises them.
sklearn minimises ``1/2 ||w||^2 + C sum_i c_i log(1 + exp(-y_i (x_i . w +
b)))`` with ``sum_i c_i = N`` and the bias unpenalised; with ``C = 1 / (l2
N)`` that is ``C N`` times

    sum_i c_i log(1 + exp(-y_i (x_i . w + b))) / N + l2/2 ||w||^2,

so ``l2`` is a penalty per example: one grid serves any training-set size.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from scipy import special
from sklearn import linear_model

from rapool_jax import metrics
from rapool_jax import rankopt


class LogisticModel(NamedTuple):
  """``w [D]``, ``b`` in standardised feature space; ``mean, std [D]``."""
  w: np.ndarray
  b: float
  mean: np.ndarray
  std: np.ndarray
  l2: float
  num_steps: int


def fit_logistic_regression(features, labels, *, l2: float = 1e-2,
                            max_iter: int = 1000,
                            tol: float = 1e-6) -> LogisticModel:
  """Fits ``features [N, D]``, ``labels [N]`` in {0, 1}. Deterministic."""
  x = np.asarray(features, np.float64)
  labels = np.asarray(labels)
  if x.ndim != 2 or labels.shape != (x.shape[0],):
    raise ValueError(f"Expected features [N, D] and labels [N], got {x.shape} "
                     f"and {labels.shape}.")
  if not np.all((labels == 0) | (labels == 1)) or labels.min() == labels.max():
    raise ValueError("labels must be 0/1 with both classes present.")
  mean, std = x.mean(axis=0), x.std(axis=0)
  # rankopt's floor: constant features get a finite standardisation.
  std = np.maximum(std, rankopt.STD_FLOOR * max(std.mean(), 1e-30))
  # tol bounds the gradient of the per-example objective (sklearn divides
  # the loss by sum_i c_i = N before L-BFGS), as the jax fit this replaced.
  sk = linear_model.LogisticRegression(
      C=1.0 / (l2 * len(labels)), class_weight="balanced", solver="lbfgs",
      max_iter=max_iter, tol=tol).fit((x - mean) / std, labels)
  return LogisticModel(sk.coef_[0], float(sk.intercept_[0]), mean, std,
                       float(l2), int(sk.n_iter_[0]))


def decision_function(model: LogisticModel, features) -> np.ndarray:
  """Logits ``[N]`` (monotone in the probability, so same AUC)."""
  x = (np.asarray(features, np.float64) - model.mean) / model.std
  return x @ model.w + model.b


def predict_proba(model: LogisticModel, features) -> np.ndarray:
  """P(positive) ``[N]``."""
  return special.expit(decision_function(model, features))


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
    auc = metrics.roc_auc(val_labels, decision_function(model, val_features))
    table[float(l2)] = auc
    if best is None or auc > table[best.l2]:
      best = model
  return best, table
