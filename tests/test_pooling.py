"""Pooling (Eq. 1) and score map (Eq. 2) against independent numpy code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rapool_jax import errors
from rapool_jax import pooling


def _features(seed=0, shape=(3, 4, 5, 6)):
  rng = np.random.default_rng(seed)
  return rng.normal(size=shape).astype(np.float32)


def test_region_average_pool_is_eq1():
  f = _features()
  b, h, w, c = f.shape
  s = np.random.default_rng(1).uniform(size=(b, h, w)).astype(np.float32)
  expected = np.zeros((b, c))
  for n in range(b):
    for i in range(c):
      expected[n, i] = sum(f[n, y, x, i] * s[n, y, x]
                           for y in range(h) for x in range(w)) / (w * h)
  got = pooling.region_average_pool(jnp.asarray(f), jnp.asarray(s))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_gap_equals_region_pool_when_score_is_one():
  f = jnp.asarray(_features())
  ones = jnp.ones(f.shape[:3])
  np.testing.assert_allclose(pooling.global_average_pool(f),
                             pooling.region_average_pool(f, ones), rtol=1e-6)
  np.testing.assert_allclose(pooling.global_average_pool(f),
                             pooling.normalized_region_pool(f, ones), rtol=1e-5)


def test_region_pool_divides_by_grid_not_by_score_sum():
  f = jnp.ones((1, 2, 2, 1))
  s = jnp.asarray([[[1.0, 0.0], [0.0, 0.0]]])
  assert float(pooling.region_average_pool(f, s)[0, 0]) == pytest.approx(0.25)
  assert float(pooling.normalized_region_pool(f, s)[0, 0]) == pytest.approx(1.0,
                                                                            rel=1e-5)


def test_score_map_is_eq2_softmax_lesion_channel():
  from rapool_jax.models.rapool_net import RAPoolNet
  from rapool_jax.models.resnet import resnet
  model = RAPoolNet(backbone=resnet("tiny", width=0.0625, output_stride=8))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)),
                  jnp.float32)
  variables = model.init(jax.random.key(0), x)
  out, state = model.apply(variables, x, capture_intermediates=True,
                           mutable=["intermediates"])
  h = np.asarray(state["intermediates"]["seg_conv"]["__call__"][0])
  h0, h1 = h[..., 0].astype(np.float64), h[..., 1].astype(np.float64)
  expected = np.exp(h1) / (np.exp(h1) + np.exp(h0))
  np.testing.assert_allclose(out["score_map"], expected, rtol=1e-5)


def test_stop_gradient_variant_blocks_gradient_to_score():
  f = jnp.asarray(_features())
  s = jnp.full(f.shape[:3], 0.5)
  g = jax.grad(lambda s: pooling.POOLINGS["region"](f, s).sum())(s)
  g_stop = jax.grad(
      lambda s: pooling.POOLINGS["region_stop_gradient"](f, s).sum())(s)
  assert np.abs(np.asarray(g)).sum() > 0
  assert np.abs(np.asarray(g_stop)).sum() == 0


def test_mask_oracle_resizes_mask_to_feature_grid():
  f = jnp.ones((1, 2, 2, 3))
  mask = np.zeros((1, 8, 8), np.float32)
  mask[0, :4, :4] = 1.0  # exactly the top-left feature cell
  got = pooling.POOLINGS["mask_oracle"](f, None, jnp.asarray(mask))
  np.testing.assert_allclose(got, 0.25 * np.ones((1, 3)), rtol=1e-6)
  with pytest.raises(ValueError, match="mask"):
    pooling.POOLINGS["mask_oracle"](f, None, None)


def test_unknown_pooling_name_is_clear():
  with pytest.raises(errors.UserError, match="pooling='avg': choose one of"):
    pooling.get_pooling("avg")
