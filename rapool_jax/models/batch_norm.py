"""BatchNorm (optionally + ReLU) whose training backward reads the activations twice.

``BatchNorm`` has flax ``nn.BatchNorm``'s variables, initialisation, running
averages and forward values, bit for bit (fast variance, float32 statistics).
Only the training-mode gradient differs, and only in the order of its float
sums: a custom VJP gives XLA the textbook two-pass backward,

    sums = sum over [B, H, W] of (g, g * (x - mean))      # one pass: x, dy
    dx   = scale / sigma * (g - mean(g) - xhat * mean(g * xhat))  # x, dy -> dx

with ``g = dy``, masked by ``y > 0`` when the ReLU is fused in. Autodiff of
flax's formula makes XLA:GPU store the masked ``g``, reduce it in a second
pass and read it again for ``dx``: two more activation-sized reads and a
write for every BatchNorm that a ReLU follows (about 4 GB per ResNet-50 step
at batch 256, ``benchmarks/README.md``). Stacking the two sums into one
reduction is what keeps XLA from materialising the mask for them.
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
  """float32 ``mean, var [C]`` of ``x [..., C]`` as flax computes them."""
  xf = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  mean = xf.mean(axes)
  var = jnp.maximum(0.0, jnp.square(xf).mean(axes) - jnp.square(mean))
  return mean, var


def _normalize(x, mean, var, scale, bias, epsilon, relu, dtype):
  y = x.astype(jnp.float32) - mean
  y = (y * (jax.lax.rsqrt(var + epsilon) * scale) + bias).astype(dtype)
  return jnp.maximum(y, 0) if relu else y


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_train(x, scale, bias, epsilon: float, relu: bool, dtype):
  """Batch-statistics normalisation of ``x [..., C]``, then ReLU if ``relu``.

  Returns ``y`` (``dtype``, the shape of x) and the float32 batch
  ``mean, var [C]`` for the running averages.
  """
  mean, var = _stats(x)
  return _normalize(x, mean, var, scale, bias, epsilon, relu, dtype), mean, var


def _batch_norm_train_fwd(x, scale, bias, epsilon, relu, dtype):
  x, scale, bias = x.value, scale.value, bias.value   # symbolic_zeros wrappers
  mean, var = _stats(x)
  y = _normalize(x, mean, var, scale, bias, epsilon, relu, dtype)
  return (y, mean, var), (x, mean, var, scale, bias)


def _batch_norm_train_bwd(epsilon, relu, dtype, residuals, cotangents):
  x, mean, var, scale, bias = residuals
  dy, dmean, dvar = cotangents
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  xc = x.astype(jnp.float32) - mean
  inv = jax.lax.rsqrt(var + epsilon)
  if isinstance(dy, jax.custom_derivatives.SymbolicZero):
    g = jnp.zeros(x.shape, jnp.float32)
  else:
    g = dy.astype(jnp.float32)
  if relu:
    y = (xc * (inv * scale) + bias).astype(dtype)   # the forward's rounding
    g = jnp.where(y > 0, g, 0.0)
  sums = jnp.sum(jnp.stack([g, g * xc], axis=-1), axes)
  sum_g, sum_gxc = sums[..., 0], sums[..., 1]
  dx = (inv * scale) * (g - sum_g / n - xc * (sum_gxc * jnp.square(inv) / n))
  # Running averages only read the batch statistics: their cotangents are
  # symbolic zeros unless a caller differentiates through them.
  if not isinstance(dmean, jax.custom_derivatives.SymbolicZero):
    dx = dx + dmean / n
  if not isinstance(dvar, jax.custom_derivatives.SymbolicZero):
    dx = dx + dvar * (2.0 / n) * xc
  return (dx.astype(x.dtype), (sum_gxc * inv).astype(scale.dtype),
          sum_g.astype(bias.dtype))


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd,
                        symbolic_zeros=True)


class BatchNorm(nn.Module):
  """``nn.BatchNorm`` over the last axis of ``[..., C]``, ReLU fused if ``relu``.

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
  def __call__(self, x):
    features = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean",
                            lambda: jnp.zeros(features, jnp.float32))
    ra_var = self.variable("batch_stats", "var",
                           lambda: jnp.ones(features, jnp.float32))
    scale = self.param("scale", nn.initializers.ones, features,
                       self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, features,
                      self.param_dtype)
    dtype = self.dtype or jnp.result_type(x, scale, bias)
    if self.use_running_average:
      return _normalize(x, ra_mean.value, ra_var.value, scale, bias,
                        self.epsilon, self.relu, dtype)
    if self.relu:
      y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, True,
                                      jnp.dtype(dtype))
    else:
      # Without a ReLU the gradient comes from a residual add whose ReLU
      # mask XLA folds into autodiff's first reduction; the custom VJP
      # would store that mask instead (2 more activation reads and writes).
      mean, var = _stats(x)
      y = _normalize(x, mean, var, scale, bias, self.epsilon, False, dtype)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


def norm_layer(impl: str, relu: bool = False, **kwargs):
  """BatchNorm, then ReLU if ``relu``, by ``impl``: "fused" (``BatchNorm``)
  or "flax" (``nn.BatchNorm`` + ``nn.relu``); same variables and values.
  ``kwargs`` are the shared attributes (``use_running_average``, ``name``...).
  """
  check_batch_norm(impl)
  if impl == "fused":
    return BatchNorm(relu=relu, **kwargs)
  norm = nn.BatchNorm(**kwargs)
  return (lambda x: nn.relu(norm(x))) if relu else norm
