"""Pooling of a feature map into one vector per image: GAP, region pooling (Eq. 1).

All functions take features ``[B, h, w, C]`` and a weight map ``[B, h, w]`` (the
lesion score map S of Eq. 2, or a given mask) and return ``[B, C]`` in float32.
The registry ``POOLINGS`` maps config names to functions with one signature:
``fn(features, score_map, mask=None) -> [B, C]``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from rapool_jax import errors


def global_average_pool(features):
  """GAP: mean over the spatial grid. ``[B, h, w, C]`` -> ``[B, C]``."""
  return jnp.mean(features.astype(jnp.float32), axis=(1, 2))


def region_average_pool(features, score_map):
  """Eq. 1: ``P_i = 1/(WH) * sum_xy f_i(x, y) S(x, y)``. -> ``[B, C]``.

  Divided by W*H, not by sum(S): a small predicted lesion yields small
  features, exactly as in the paper (see ``normalized_region_pool``).
  """
  f = features.astype(jnp.float32)
  s = score_map.astype(jnp.float32)[..., None]
  return jnp.mean(f * s, axis=(1, 2))


def normalized_region_pool(features, score_map, eps: float = 1e-6):
  """Ablation: weighted mean, ``sum f S / sum S``. -> ``[B, C]``."""
  f = features.astype(jnp.float32)
  s = score_map.astype(jnp.float32)[..., None]
  return jnp.sum(f * s, axis=(1, 2)) / (jnp.sum(s, axis=(1, 2)) + eps)


def resize_mask_to_features(mask, feature_hw: tuple[int, int]):
  """Area-resizes a mask ``[B, H, W]`` in [0, 1] to the feature grid ``[B, h, w]``.

  Uses box averaging when H, W are multiples of h, w (the usual case for a
  ResNet), so each feature cell gets the lesion fraction of the pixels it covers.
  """
  mask = mask.astype(jnp.float32)
  b, height, width = mask.shape
  h, w = feature_hw
  if height % h == 0 and width % w == 0:
    return mask.reshape(b, h, height // h, w, width // w).mean(axis=(2, 4))
  return jax.image.resize(mask, (b, h, w), method="linear", antialias=True)


def mask_average_pool(features, mask):
  """Ablation (oracle): Eq. 1 with the ground-truth mask as S. -> ``[B, C]``.

  ``mask [B, H, W]`` in [0, 1], at any resolution, is area-resized to ``h, w``.
  """
  if mask is None:
    raise ValueError("pooling='mask_oracle' needs the ground-truth mask "
                     "in the batch; this data split has none")
  weights = resize_mask_to_features(mask, features.shape[1:3])
  return region_average_pool(features, weights)


# Registry: name -> fn(features, score_map, mask) -> [B, C].
POOLINGS: dict[str, Callable] = {
    "gap": lambda f, s, m=None: global_average_pool(f),
    "region": lambda f, s, m=None: region_average_pool(f, s),
    "region_stop_gradient": (
        lambda f, s, m=None: region_average_pool(f, jax.lax.stop_gradient(s))),
    "region_normalized": lambda f, s, m=None: normalized_region_pool(f, s),
    "region_normalized_stop_gradient": (
        lambda f, s, m=None: normalized_region_pool(f, jax.lax.stop_gradient(s))),
    "mask_oracle": lambda f, s, m=None: mask_average_pool(f, m),
}


def reads_mask(name: str) -> bool:
  """Whether pooling ``name`` pools over the ground-truth mask, so that it
  cannot score an image that has none (an empty mask gives one constant)."""
  return name == "mask_oracle"


def get_pooling(name: str, where: str = "pooling") -> Callable:
  """Looks up a pooling by its config name (``where``: the config key)."""
  try:
    return POOLINGS[name]
  except KeyError:
    raise errors.UserError(f"{where}={name!r}: choose one of "
                           f"{sorted(POOLINGS)}") from None
