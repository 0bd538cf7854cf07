"""Losses of Eq. 3: ``L = lambda_class * L_class + lambda_seg * L_seg``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rapool_jax import errors


def classification_loss(logits, labels):
  """Mean softmax cross-entropy. ``logits [B, K]``, ``labels [B]`` int."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels))


def segmentation_loss(seg_logits, masks, has_mask):
  """Pixel-wise 2-class cross-entropy, mean over pixels of images with a mask.

  Args:
    seg_logits: ``[B, H, W, 2]`` (h0 background, h1 lesion).
    masks: ``[B, H, W]`` in {0, 1}.
    has_mask: ``[B]`` bool; images without a ground-truth mask are ignored.
  """
  logits = seg_logits.astype(jnp.float32)
  # One-hot, not integer labels: those lower to a gather over every pixel
  # whose gradient is a scatter-add (1 GB of traffic at batch 256 on GPU);
  # this form stays elementwise and gives the same values and gradients.
  per_pixel = optax.softmax_cross_entropy(
      logits, jax.nn.one_hot(masks, logits.shape[-1], dtype=jnp.float32))
  per_image = jnp.mean(per_pixel, axis=(1, 2))
  weight = has_mask.astype(jnp.float32)
  return jnp.sum(per_image * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def check_loss_weights(stage, where: str) -> None:
  """Eq. 3's weights are non-negative (a negative one ascends its loss)."""
  for key in ("lambda_class", "lambda_seg"):
    errors.check_range(f"{where}.{key}", stage[key], low=0)
