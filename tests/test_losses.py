"""The losses of Eq. 3 against plain numpy."""

import jax
import jax.numpy as jnp
import numpy as np

from rapool_jax import losses


def _numpy_pixel_ce(logits, masks):
  logits = logits.astype(np.float64)
  lse = np.log(np.exp(logits).sum(-1))
  picked = np.take_along_axis(logits, masks[..., None].astype(int), -1)[..., 0]
  return lse - picked                                   # [B, H, W]


def test_segmentation_loss_is_the_mean_pixel_ce_over_images_with_masks():
  rng = np.random.default_rng(0)
  logits = (4 * rng.normal(size=(3, 5, 6, 2))).astype(np.float32)
  masks = rng.integers(0, 2, size=(3, 5, 6)).astype(np.uint8)
  has_mask = np.array([True, False, True])
  per_image = _numpy_pixel_ce(logits, masks).mean(axis=(1, 2))
  got = losses.segmentation_loss(jnp.asarray(logits), jnp.asarray(masks),
                                 jnp.asarray(has_mask))
  np.testing.assert_allclose(got, per_image[[0, 2]].mean(), rtol=1e-6)
  # With every mask, the mean over images; with no mask at all the loss is 0.
  np.testing.assert_allclose(
      losses.segmentation_loss(jnp.asarray(logits), jnp.asarray(masks),
                               jnp.ones(3, bool)),
      per_image.mean(), rtol=1e-6)
  assert float(losses.segmentation_loss(
      jnp.asarray(logits), jnp.asarray(masks), jnp.zeros(3, bool))) == 0.0


def test_segmentation_loss_gradient_is_softmax_minus_one_hot():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 4, 4, 2)).astype(np.float32)
  masks = rng.integers(0, 2, size=(2, 4, 4)).astype(np.uint8)
  grad = jax.grad(losses.segmentation_loss)(
      jnp.asarray(logits), jnp.asarray(masks), jnp.ones(2, bool))
  softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  expected = (softmax - np.eye(2)[masks]) / masks.size
  np.testing.assert_allclose(grad, expected, atol=1e-7)


def test_classification_loss_matches_numpy():
  logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]], np.float32)
  labels = np.array([0, 1])
  lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  expected = np.mean(lse - logits[np.arange(2), labels])
  np.testing.assert_allclose(
      losses.classification_loss(jnp.asarray(logits), jnp.asarray(labels)),
      expected, rtol=1e-6)
