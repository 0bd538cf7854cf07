"""BatchNorm (+ residual add, + ReLU) with a two-pass training backward.

``BatchNorm`` has flax ``nn.BatchNorm``'s variables, initialisation, running
averages and forward formula (fast variance, float32 statistics), and can add
a residual and apply a ReLU after it: ``relu(bn(x) + residual)`` is a ResNet
block's tail. On the CPU its forward values are flax's bit for bit; on GPUs
and TPUs the two statistics come from one reduce op (one kernel fewer per
layer on XLA:GPU), whose float sums may round differently. The training-mode
gradient differs from autodiff only in the order of its float sums: a custom
VJP gives XLA the textbook backward,

    g    = dy masked by (bn(x) + residual > 0)         # also d residual
    sums = sum over [B, H, W] of (g, g * (x - mean))   # one pass: x, dy
    dx   = scale / sigma * (g - mean(g) - xhat * mean(g * xhat))

Autodiff of flax's formula makes XLA:GPU store the masked ``g``, read it
again in a second reduction for ``sum(g)``, and a third time for ``dx``: for
every BatchNorm that a ReLU follows, two activation-sized passes more than
this (``benchmarks/README.md``). The two sums are one reduce op
(``_pair_sum``), which is what keeps XLA from storing the mask for two.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

BATCH_NORMS = ("fused", "flax")


def check_batch_norm(impl: str) -> None:
  if impl not in BATCH_NORMS:
    raise ValueError(f"model.batch_norm_impl must be one of {BATCH_NORMS}, "
                     f"got {impl!r}")


def _stats(x):
  """float32 ``mean, var [C]`` of ``x [..., C]`` (fast variance, as flax)."""
  xf = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  mean, mean_sq = jax.lax.platform_dependent(
      xf, cpu=functools.partial(_flax_means, axes=axes),
      default=functools.partial(_one_reduction_means, axes=axes))
  return mean, jnp.maximum(0.0, mean_sq - jnp.square(mean))


def _flax_means(xf, axes):
  """``mean(x), mean(x^2)`` as flax computes them, bit for bit."""
  return xf.mean(axes), jnp.square(xf).mean(axes)


def _one_reduction_means(xf, axes):
  """``mean(x), mean(x^2)`` from one reduce op: XLA:GPU then launches one
  second-stage reduction kernel per layer instead of two. The sums may
  round differently from flax's."""
  n = xf.size // xf.shape[-1]
  sum_x, sum_sq = _complex_pair_sum(xf, jnp.square(xf), axes)
  return sum_x / n, sum_sq / n


def _normalize(x, mean, var, scale, bias, epsilon, dtype):
  y = x.astype(jnp.float32) - mean
  return (y * (jax.lax.rsqrt(var + epsilon) * scale) + bias).astype(dtype)


def _tail(y, residual, relu):
  """``relu(y + residual)`` as a ResNet block computes it (either optional)."""
  if residual is not None:
    y = y + residual
  return jnp.maximum(y, 0) if relu else y


def _pair_sum(a, b, axes):
  """``sum(a), sum(b)`` over ``axes`` as one reduction.

  On GPUs and TPUs as one complex64 sum (componentwise: two float32 sums).
  On XLA:CPU that made the ResNet-50 step 7% slower, so there a sum over
  ``stack`` (which XLA:GPU would store ``a`` apart for).
  """
  return jax.lax.platform_dependent(
      a, b, cpu=functools.partial(_stacked_pair_sum, axes=axes),
      default=functools.partial(_complex_pair_sum, axes=axes))


def _complex_pair_sum(a, b, axes):
  sums = jnp.sum(jax.lax.complex(a, b), axes)
  return jnp.real(sums), jnp.imag(sums)


def _stacked_pair_sum(a, b, axes):
  sums = jnp.sum(jnp.stack([a, b], axis=-1), axes)
  return sums[..., 0], sums[..., 1]


def _is_zero(ct) -> bool:
  return isinstance(ct, jax.custom_derivatives.SymbolicZero)


def _batch_norm(x, scale, bias, residual, epsilon, relu, dtype):
  mean, var = _stats(x)
  y = _normalize(x, mean, var, scale, bias, epsilon, dtype)
  return _tail(y, residual, relu), mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def batch_norm_train(x, scale, bias, residual, epsilon: float, relu: bool,
                     dtype):
  """``relu(bn(x) + residual)`` with batch statistics, ``x [..., C]``.

  ``residual`` (the shape of x, or None) and the ReLU are optional. Returns the
  output (``bn`` in ``dtype``, then the add's type) and the float32 batch
  ``mean, var [C]`` for the running averages.
  """
  return _batch_norm(x, scale, bias, residual, epsilon, relu, dtype)


def _batch_norm_train_fwd(x, scale, bias, residual, epsilon, relu, dtype):
  # symbolic_zeros=True wraps each differentiable argument (None stays None).
  x, scale, bias, residual = (None if a is None else a.value
                              for a in (x, scale, bias, residual))
  out = _batch_norm(x, scale, bias, residual, epsilon, relu, dtype)
  return out, (x, out[1], out[2], scale, bias, residual)


def _batch_norm_train_bwd(epsilon, relu, dtype, saved, cotangents):
  x, mean, var, scale, bias, residual = saved
  dout, dmean, dvar = cotangents
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  xc = x.astype(jnp.float32) - mean
  inv = jax.lax.rsqrt(var + epsilon)
  if _is_zero(dout):
    dout = jnp.zeros(dout.shape, dout.dtype)
  g = dout
  if relu:   # the forward's output, recomputed for its ReLU mask
    y = _tail((xc * (inv * scale) + bias).astype(dtype), residual, False)
    g = jnp.where(y > 0, dout, jnp.zeros_like(dout))
  gf = g.astype(jnp.float32)
  sum_g, sum_gxc = _pair_sum(gf, gf * xc, axes)
  dx = (inv * scale) * (gf - sum_g / n - xc * (sum_gxc * jnp.square(inv) / n))
  # The running averages only read the batch statistics: their cotangents
  # are symbolic zeros unless a caller differentiates through them.
  if not _is_zero(dmean):
    dx = dx + dmean / n
  if not _is_zero(dvar):
    dx = dx + dvar * (2.0 / n) * xc
  dresidual = None if residual is None else g.astype(residual.dtype)
  return (dx.astype(x.dtype), (sum_gxc * inv).astype(scale.dtype),
          sum_g.astype(bias.dtype), dresidual)


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd,
                        symbolic_zeros=True)


class BatchNorm(nn.Module):
  """``nn.BatchNorm`` over the last axis of ``[..., C]``; ``__call__(x,
  residual)`` returns ``relu(bn(x) + residual)``, ReLU if ``relu``.

  Same variables (``params/scale, bias``; ``batch_stats/mean, var``) and
  running-average rule as flax, so checkpoints and the ImageNet converter
  work unchanged.
  """

  use_running_average: bool
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  relu: bool = False

  @nn.compact
  def __call__(self, x, residual=None):
    features = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean",
                            lambda: jnp.zeros(features, jnp.float32))
    ra_var = self.variable("batch_stats", "var",
                           lambda: jnp.ones(features, jnp.float32))
    scale = self.param("scale", nn.initializers.ones, features,
                       self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, features,
                      self.param_dtype)
    dtype = jnp.dtype(self.dtype or jnp.result_type(x, scale, bias))
    if self.use_running_average:
      y = _normalize(x, ra_mean.value, ra_var.value, scale, bias,
                     self.epsilon, dtype)
      return _tail(y, residual, self.relu)
    if self.relu:
      y, mean, var = batch_norm_train(x, scale, bias, residual, self.epsilon,
                                      True, dtype)
    else:
      # No ReLU, so no mask: autodiff's backward is already two passes, and
      # a custom VJP measured 2 activation passes worse there.
      mean, var = _stats(x)
      y = _tail(_normalize(x, mean, var, scale, bias, self.epsilon, dtype),
                residual, False)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


def norm_layer(impl: str, relu: bool = False, **kwargs):
  """``(x, residual=None) -> relu(bn(x) + residual)`` (ReLU if ``relu``), by
  ``impl``: "fused" (``BatchNorm``) or "flax" (``nn.BatchNorm``, the add and
  ``nn.relu`` under autodiff); same variables and values. ``kwargs`` are the
  shared attributes (``use_running_average``, ``name``, ...).
  """
  check_batch_norm(impl)
  if impl == "fused":
    return BatchNorm(relu=relu, **kwargs)
  norm = nn.BatchNorm(**kwargs)

  def apply(x, residual=None):
    y = norm(x)
    if residual is not None:
      y = y + residual
    return nn.relu(y) if relu else y
  return apply
