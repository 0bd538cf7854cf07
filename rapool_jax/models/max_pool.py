"""Max pooling, two ways with the same values and the same gradient.

``"reduce_window"`` is flax's ``nn.max_pool``: XLA's ``reduce_window``
forward and ``select_and_scatter`` backward. ``"slices"`` takes the maximum of
the window's strided slices and saves, per output, the int8 index of the
first maximum in its window. The backward then spreads each gradient to that
input pixel with pads and adds, with no scatter. That is the rule
``select_and_scatter`` applies, ties included, so gradients match exactly.
``"auto"`` lowers ``"slices"`` for GPUs and ``"reduce_window"`` elsewhere.

``"reduce_window"`` is the default: it was the faster on both machines timed.
The sliced form has no scatter with atomics and, by XLA:GPU's own count,
about 4 GB less traffic in a ResNet-50 step at batch 256, yet timed 0.3-0.4%
slower on an H200 and 7% slower on a 2-core CPU (``benchmarks/README.md``).
The other two stay for ablations and other GPUs.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

MAX_POOL_IMPLS = ("auto", "reduce_window", "slices")

Padding = tuple[tuple[int, int], tuple[int, int]]


def _window_views(xp, window, strides, out_hw):
  """Strided views ``[B, Ho, Wo, C]`` of padded ``xp``, window order row-major."""
  for i in range(window[0]):
    for j in range(window[1]):
      limit = (xp.shape[0], i + (out_hw[0] - 1) * strides[0] + 1,
               j + (out_hw[1] - 1) * strides[1] + 1, xp.shape[3])
      yield lax.slice(xp, (0, i, j, 0), limit, (1, *strides, 1))


def _forward(x, window, strides, padding):
  """``[B, H, W, C]`` -> max ``[B, Ho, Wo, C]`` and the window index of the
  first maximum (int8), where select_and_scatter sends the gradient."""
  xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype),
               ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))
  out_hw = tuple((x.shape[1 + a] + sum(padding[a]) - window[a]) // strides[a]
                 + 1 for a in range(2))
  views = list(_window_views(xp, window, strides, out_hw))
  y = functools.reduce(jnp.maximum, views)
  first = jnp.full(y.shape, len(views), jnp.int8)
  for k in reversed(range(len(views))):
    first = jnp.where(views[k] == y, jnp.int8(k), first)
  return y, first


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def slice_max_pool(x, window: tuple[int, int], strides: tuple[int, int],
                   padding: Padding):
  """Max pool of ``x [B, H, W, C]`` over ``window`` (explicit ``padding``
  ``((top, bottom), (left, right))``), ``nn.max_pool``'s values and gradient."""
  return _forward(x, window, strides, padding)[0]


def _slice_max_pool_fwd(x, window, strides, padding):
  y, first = _forward(x, window, strides, padding)
  return y, (first, x.shape)


def _slice_max_pool_bwd(window, strides, padding, residuals, dy):
  first, shape = residuals
  padded = [shape[1 + a] + sum(padding[a]) for a in range(2)]
  zero = jnp.zeros((), dy.dtype)
  dxp = 0
  for k in range(window[0] * window[1]):
    i, j = divmod(k, window[1])
    hi = [padded[a] - (i, j)[a] - (dy.shape[1 + a] - 1) * strides[a] - 1
          for a in range(2)]
    # Spread the window's gradient back to its input pixels.
    dxp = dxp + lax.pad(jnp.where(first == k, dy, zero), zero,
                        ((0, 0, 0), (i, hi[0], strides[0] - 1),
                         (j, hi[1], strides[1] - 1), (0, 0, 0)))
  (top, _), (left, _) = padding
  return (dxp[:, top:top + shape[1], left:left + shape[2]],)


slice_max_pool.defvjp(_slice_max_pool_fwd, _slice_max_pool_bwd)


def check_max_pool(impl: str) -> None:
  """Raises ValueError naming ``model.max_pool`` for an unknown ``impl``."""
  if impl not in MAX_POOL_IMPLS:
    raise ValueError(f"model.max_pool={impl!r}: choose one of "
                     f"{MAX_POOL_IMPLS}")


def max_pool(x, window: Sequence[int], strides: Sequence[int],
             padding: Padding, impl: str = "reduce_window"):
  """Max pool of ``x [B, H, W, C]``: ``impl`` is one of ``MAX_POOL_IMPLS``."""
  check_max_pool(impl)
  window, strides = tuple(window), tuple(strides)
  padding = tuple(tuple(p) for p in padding)
  sliced = functools.partial(slice_max_pool, window=window, strides=strides,
                             padding=padding)
  flax_pool = functools.partial(nn.max_pool, window_shape=window,
                                strides=strides, padding=padding)
  if impl == "slices":
    return sliced(x)
  if impl == "reduce_window":
    return flax_pool(x)
  # Lowering for one platform keeps only its branch: no conditional is left.
  return lax.platform_dependent(x, cuda=sliced, rocm=sliced, default=flax_pool)
