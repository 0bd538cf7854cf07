"""RankOpt (Sec. II-C, Eq. 4-8): a linear classifier maximising smoothed AUC.

For beta ``[D]``, positives ``x_pos [P, D]`` and negatives ``x_neg [Q, D]``:

* Eq. 4, ``exact_auc``: mean over all (i, j) of g(beta . (x_i+ - x_j-)), g the
  step function with g(0) = 1/2; from sorted scores in O(n log n).
* Eq. 6, ``rank_statistic``: R(beta) = mean over (i, j) of sigmoid(s_i - s_j)
  with scores s = x beta: a P x Q matrix of sigmoids over two score vectors,
  never the P x Q x D difference tensor, streamed in chunks of positives
  (memory O(chunk x Q)). Its derivative (Eq. 8), ``dR/dbeta = (x_pos^T a -
  x_neg^T b) / (P Q)`` with a, b the row / column sums of sigmoid * (1 -
  sigmoid), comes out of the same pass through a custom JVP, so
  ``jax.grad(rank_statistic)`` costs one pass, not two.
* Eq. 7, ``fit``: maximise R on the sphere ||beta|| = B by projected
  (Riemannian) gradient ascent, in features standardised with training
  statistics, from scores gathered out of one [N, D] matrix (no class copies).

The radius B (the paper only says "large"). R depends on beta only through
B * (u . (x_i - x_j)) for the unit direction u, so B matters only relative to
the spread of the projections. Small B makes sigmoid nearly linear, R ~ 1/2 +
B/4 * u . (mean_pos - mean_neg), maximised by the class-mean difference (our
starting point); B -> inf makes R the empirical AUC, piecewise constant with a
vanishing gradient. B is thus an inverse regularisation strength between
"nearest class mean" and "pure training-AUC maximisation". Default
(``radius=None``): at the starting direction u0, B makes the root-mean-square
pair difference ``B * rms_ij(u0 . (x_i+ - x_j-))`` equal ``radius_scale`` = 10
sigmoid units. A typical pair then sits within 5e-5 of the step function; only
pairs closer than ~0.3 RMS (|margin| < 3) are visibly smoothed, and those
carry the gradient. The RMS is exact and O(n): rms^2 = var(s_pos) +
var(s_neg) + (mean s_pos - mean s_neg)^2. Being relative, the rule is
invariant to feature scale and dimension, where a fixed B (say 10 sqrt(D))
would saturate every sigmoid for D = 2048. With few samples per dimension a
smaller scale (1-3) generalises better on synthetic data: tune it on
validation AUC.

Step rule. At beta with gradient g, the ascent direction is the tangent
component g_t = g - (g . beta) beta / B^2; along the great circle through beta
towards g_t, dR/dtheta = B ||g_t||. A step of angle theta = eta * B ||g_t||
(at most ``MAX_ANGLE``) moves exactly on the sphere, beta' = B (cos theta
beta / B + sin theta g_t / ||g_t||). eta adapts deterministically ("bold
driver"): an improving step is accepted and eta grows by ``GROW``; a worsening
one is rejected (beta kept) and eta shrinks by ``SHRINK``. So the R history
never decreases, and ``FIRST_ANGLE`` is the first step's angle in radians.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rapool_jax import metrics

DEFAULT_CHUNK_SIZE = 128  # positives per chunk of the P x Q pair matrix
# The step rule (module docstring): the first step's angle and the cap on a
# step's angle, radians; eta's factors after an accepted / a rejected step.
FIRST_ANGLE, MAX_ANGLE, GROW, SHRINK = 0.1, 0.5, 1.2, 0.5
STD_FLOOR = 1e-3  # a fraction of the mean feature std (``_standardised``)


class RankOptResult(NamedTuple):
  """A fitted RankOpt classifier (a pytree; pass it to jitted functions).

  beta: ``[D]`` weights in standardised feature space, ||beta|| = radius.
  mean, std: ``[D]`` training statistics used to standardise.
  radius: B. threshold: decision threshold on ``decision_function`` values.
  r_history, auc_history: ``[max_steps]`` R and exact training AUC after each
    step, NaN after the stop.
  num_steps: steps taken. converged: stopped by ``tol`` rather than
    ``max_steps``.
  """
  beta: jax.Array
  mean: jax.Array
  std: jax.Array
  radius: float
  threshold: float
  r_history: jax.Array
  auc_history: jax.Array
  num_steps: int
  converged: bool


def _chunked_pairs(s_pos, s_neg, chunk_size, with_grad):
  """Streams the [P, Q] matrix sigmoid(s_pos_i - s_neg_j) in row chunks.

  Returns (sum of sigmoids, row sums of w [P], column sums of w [Q]) with
  w = sigmoid * (1 - sigmoid); the last two are None unless ``with_grad``.
  """
  p, q = s_pos.shape[0], s_neg.shape[0]
  chunk = max(1, min(int(chunk_size), p))
  n_chunks = -(-p // chunk)
  pad = n_chunks * chunk - p
  # Padded rows are masked out below; 0 keeps them finite.
  rows = jnp.pad(s_pos, (0, pad)).reshape(n_chunks, chunk)
  mask = (jnp.arange(n_chunks * chunk) < p).reshape(n_chunks, chunk)
  mask = mask.astype(s_pos.dtype)

  def body(carry, xs):
    total, col_w = carry
    row, m = xs
    z = row[:, None] - s_neg[None, :]
    sig = jax.nn.sigmoid(z)
    total = total + jnp.sum(jnp.sum(sig, axis=1) * m)
    if not with_grad:
      return (total, col_w), None
    # sigmoid(z) sigmoid(-z) stays accurate where 1 - sigmoid(z) underflows.
    w = sig * jax.nn.sigmoid(-z) * m[:, None]
    return (total, col_w + jnp.sum(w, axis=0)), jnp.sum(w, axis=1)

  zero = jnp.zeros((), s_pos.dtype)
  col0 = jnp.zeros((q,) if with_grad else (0,), s_pos.dtype)
  (total, col_w), row_w = jax.lax.scan(body, (zero, col0), (rows, mask))
  if not with_grad:
    return total, None, None
  return total, row_w.reshape(-1)[:p], col_w


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _pair_sigmoid_mean(s_pos, s_neg, chunk_size):
  """mean_ij sigmoid(s_pos_i - s_neg_j). ``[P], [Q]`` -> scalar."""
  total, _, _ = _chunked_pairs(s_pos, s_neg, chunk_size, with_grad=False)
  return total / (s_pos.shape[0] * s_neg.shape[0])


@_pair_sigmoid_mean.defjvp
def _pair_sigmoid_mean_jvp(chunk_size, primals, tangents):
  s_pos, s_neg = primals
  ds_pos, ds_neg = tangents
  total, row_w, col_w = _chunked_pairs(s_pos, s_neg, chunk_size, with_grad=True)
  n_pairs = s_pos.shape[0] * s_neg.shape[0]
  # Linear in the tangents, so reverse mode transposes it to X^T a - X^T b.
  dr = (jnp.dot(row_w, ds_pos) - jnp.dot(col_w, ds_neg)) / n_pairs
  return total / n_pairs, dr


def rank_statistic(beta, x_pos, x_neg, chunk_size: int = DEFAULT_CHUNK_SIZE):
  """Eq. 6, R(beta). ``[D], [P, D], [Q, D]`` -> scalar; grad is Eq. 8.

  Memory O(chunk_size x Q) for the value and for ``jax.grad``.
  """
  return _pair_sigmoid_mean(x_pos @ beta, x_neg @ beta, chunk_size)


def _auc_from_scores(s_pos, s_neg):
  """Eq. 4 with g(0) = 1/2 from scores. ``[P], [Q]`` -> scalar."""
  s_neg = jnp.sort(s_neg)
  below = jnp.searchsorted(s_neg, s_pos, side='left')
  at_or_below = jnp.searchsorted(s_neg, s_pos, side='right')
  # Per-positive fractions in [0, 1]: no integer overflow for large P * Q.
  frac = (below + at_or_below).astype(jnp.float32) / (2.0 * s_neg.shape[0])
  return jnp.mean(frac)


def exact_auc(beta, x_pos, x_neg):
  """Eq. 4, AUC(beta), ties counted 1/2. ``[D], [P, D], [Q, D]`` -> scalar."""
  return _auc_from_scores(x_pos @ beta, x_neg @ beta)


def decision_function(result: RankOptResult, features):
  """Scores ``standardise(features) @ beta``. ``[N, D]`` -> ``[N]`` float32."""
  x = (jnp.asarray(features, jnp.float32) - result.mean) / result.std
  return (x @ result.beta).astype(jnp.float32)


def _initial_direction_and_radius(x, pos_idx, neg_idx, radius, radius_scale,
                                  auto_radius):
  """Unit class-mean difference u0 ``[D]`` and B (see module docstring)."""
  n, d = x.shape
  # A weighted matvec, not x[pos_idx]: gathering rows would copy them.
  weights = (jnp.zeros(n, x.dtype).at[pos_idx].set(1.0 / pos_idx.shape[0])
             .at[neg_idx].set(-1.0 / neg_idx.shape[0]))
  diff = weights @ x  # mean_pos - mean_neg
  norm = jnp.linalg.norm(diff)
  # Identical class means: any direction is as good; keep it deterministic.
  fallback = jnp.full((d,), 1.0 / np.sqrt(d), x.dtype)
  u0 = jnp.where(norm > 0, diff / jnp.where(norm > 0, norm, 1.0), fallback)
  if not auto_radius:
    return u0, jnp.asarray(radius, x.dtype)
  s = x @ u0
  sp, sn = s[pos_idx], s[neg_idx]
  rms = jnp.sqrt(jnp.var(sp) + jnp.var(sn) + (jnp.mean(sp) - jnp.mean(sn))**2)
  return u0, radius_scale / jnp.maximum(rms, 1e-12)


def _class_statistic(beta, x, pos_idx, neg_idx, chunk_size):
  """``rank_statistic(beta, x[pos_idx], x[neg_idx])`` and scores x beta [N],
  from the gathered [N] scores: the classes need no copies of x's rows."""
  s = x @ beta
  return _pair_sigmoid_mean(s[pos_idx], s[neg_idx], chunk_size), s


class _Ascent(NamedTuple):
  """The projected gradient ascent's loop state (``_fit_core``)."""
  step: jax.Array
  beta: jax.Array
  r: jax.Array
  scores: jax.Array
  gt: jax.Array
  eta: jax.Array
  done: jax.Array
  r_hist: jax.Array
  auc_hist: jax.Array


def _standardised(features):
  """``features [N, D]`` -> ``(x, mean, std)``: centred and scaled per
  dimension."""
  features = features.astype(jnp.float32)
  mean = jnp.mean(features, axis=0)
  centred = features - mean  # The one [N, D] copy; x below reuses it.
  std = jnp.sqrt(jnp.mean(jnp.square(centred), axis=0))
  # Floor relative to the typical std: constant features get weight ~0
  # instead of exploding, whatever the feature scale.
  std = jnp.maximum(std, STD_FLOOR * jnp.maximum(jnp.mean(std), 1e-30))
  return centred / std, mean, std


def _ascent_step(st: _Ascent, *, b, value_and_grad, pos_idx, neg_idx,
                 tol) -> _Ascent:
  """One step along the great circle towards the tangent gradient (Eq. 7-8);
  a step that lowers R is rejected and the step size shrinks."""
  gt_norm = jnp.linalg.norm(st.gt)
  theta = jnp.minimum(st.eta * b * gt_norm, MAX_ANGLE)
  direction = st.gt / jnp.maximum(gt_norm, 1e-30)
  trial = jnp.cos(theta) * st.beta + (jnp.sin(theta) * b) * direction
  # Re-normalise: cos/sin rounding must not let the radius drift over steps.
  trial = trial * (b / jnp.linalg.norm(trial))
  (r_new, s_new), g_new = value_and_grad(trial)
  accept = r_new >= st.r
  pick = lambda new, old: jnp.where(accept, new, old)  # noqa: E731
  scores = pick(s_new, st.scores)
  # Only an accepted step measures progress; a rejected one just shrinks
  # eta, and an eta too small to move R is accepted with gain 0 < tol.
  done = (accept & (r_new - st.r < tol)) | (gt_norm == 0)
  auc = _auc_from_scores(scores[pos_idx], scores[neg_idx])
  return _Ascent(st.step + 1, pick(trial, st.beta), pick(r_new, st.r), scores,
                 pick(_tangent(trial, g_new, b), st.gt),
                 pick(st.eta * GROW, st.eta * SHRINK), done,
                 st.r_hist.at[st.step].set(pick(r_new, st.r)),
                 st.auc_hist.at[st.step].set(auc))


def _tangent(beta, g, b):
  """``g`` projected onto the sphere's tangent plane at ``beta``."""
  return g - (jnp.dot(g, beta) / (b * b)) * beta


@functools.partial(
    jax.jit,
    static_argnames=('auto_radius', 'max_steps'))
def _fit_core(features, pos_idx, neg_idx, *, auto_radius, radius, radius_scale,
              max_steps, tol):
  """The jitted optimisation; ``pos_idx [P]``, ``neg_idx [Q]``. See ``fit``."""
  x, mean, std = _standardised(features)
  u0, b = _initial_direction_and_radius(x, pos_idx, neg_idx, radius,
                                        radius_scale, auto_radius)
  value_and_grad = jax.value_and_grad(
      functools.partial(_class_statistic, x=x, pos_idx=pos_idx,
                        neg_idx=neg_idx, chunk_size=DEFAULT_CHUNK_SIZE),
      has_aux=True)
  beta0 = b * u0
  (r0, s0), g0 = value_and_grad(beta0)
  gt0 = _tangent(beta0, g0, b)
  dtheta0 = b * jnp.linalg.norm(gt0)  # dR / d(angle)
  nan_hist = jnp.full((max_steps,), jnp.nan, jnp.float32)
  init = _Ascent(jnp.asarray(0), beta0, r0, s0, gt0,
                 FIRST_ANGLE / jnp.maximum(dtheta0, 1e-30),
                 jnp.asarray(False), nan_hist, nan_hist)
  body = functools.partial(
      _ascent_step, b=b, value_and_grad=value_and_grad, pos_idx=pos_idx,
      neg_idx=neg_idx, tol=tol)
  out = jax.lax.while_loop(lambda st: (st.step < max_steps) & ~st.done, body,
                           init)
  return (out.beta, mean, std, b, out.r_hist, out.auc_hist, out.step,
          out.done, out.scores)


def _class_indices(features, labels, max_steps: int, radius):
  """``(pos_idx [P], neg_idx [Q])`` int32, after checking ``fit``'s inputs."""
  if features.ndim != 2 or labels.shape != (features.shape[0],):
    raise ValueError(
        f'Expected features [N, D] and labels [N], got {features.shape} and '
        f'{labels.shape}.')
  if not np.all((labels == 0) | (labels == 1)):
    raise ValueError('labels must be 0/1 (1 = positive).')
  n_pos = int(labels.sum())
  n_neg = labels.size - n_pos
  if n_pos == 0 or n_neg == 0:
    raise ValueError(
        f'RankOpt needs both classes, got {n_pos} positives and {n_neg} '
        'negatives.')
  if max_steps < 1:
    raise ValueError(f'max_steps must be >= 1, got {max_steps}.')
  if radius is not None and not radius > 0:
    raise ValueError(f'radius must be positive, got {radius}.')
  return (np.flatnonzero(labels == 1).astype(np.int32),
          np.flatnonzero(labels == 0).astype(np.int32))


def fit(features, labels, *, radius: float | None = None,
        radius_scale: float = 10.0, max_steps: int = 300, tol: float = 1e-6,
        threshold_features=None, threshold_labels=None) -> RankOptResult:
  """Fits RankOpt (Eq. 7) on ``features [N, D]``, ``labels [N]`` in {0, 1}.

  Args:
    radius: B; None chooses it from the data (module docstring).
    radius_scale: target RMS pair margin in sigmoid units when radius is None.
    max_steps: step budget; also the length of the history arrays.
    tol: stop after an accepted step that raises R by less than this.
    threshold_features, threshold_labels: data for the Youden-J threshold;
      the training data when None.

  The optimisation is one jitted ``lax.while_loop``; only the class indices
  are found on the host (their counts fix array shapes). Deterministic.
  Extra memory: one standardised copy of the features plus O(chunk x Q).
  """
  if threshold_features is not None and threshold_labels is None:
    raise ValueError('threshold_features given without threshold_labels.')
  features = jnp.asarray(features, jnp.float32)
  labels_np = np.asarray(labels)
  pos_idx, neg_idx = _class_indices(features, labels_np, max_steps, radius)
  beta, mean, std, b, r_hist, auc_hist, steps, done, train_scores = _fit_core(
      features, pos_idx, neg_idx, auto_radius=radius is None,
      radius=0.0 if radius is None else float(radius),
      radius_scale=float(radius_scale), max_steps=int(max_steps),
      tol=float(tol))
  result = RankOptResult(beta, mean, std, float(b), float('nan'), r_hist,
                         auc_hist, int(steps), bool(done))
  scores, y = train_scores, labels_np
  if threshold_features is not None:
    scores, y = decision_function(result, threshold_features), threshold_labels
  return result._replace(
      threshold=metrics.youden_threshold(y, np.asarray(scores)))


def save(result: RankOptResult, path: str, **extra) -> None:
  """Writes a fitted classifier (and scalar ``extra`` values) to an ``.npz``."""
  arrays = {f: np.asarray(getattr(result, f)) for f in RankOptResult._fields}
  arrays.update({f"extra_{k}": np.asarray(v) for k, v in extra.items()})
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def load(path: str) -> tuple[RankOptResult, dict]:
  """Reads what ``save`` wrote: ``(result, extra)``."""
  with np.load(path) as data:
    result = RankOptResult(**{
        f: (data[f].item() if data[f].ndim == 0 else jnp.asarray(data[f]))
        for f in RankOptResult._fields})
    extra = {k[len("extra_"):]: data[k].item() for k in data.files
             if k.startswith("extra_")}
  return result, extra
