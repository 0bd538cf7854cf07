"""Backbone and two-branch network: sizes, shapes, upsampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rapool_jax import errors
from rapool_jax.models import rapool_net
from rapool_jax.models.resnet import resnet


def _param_count(module, size=64):
  variables = jax.eval_shape(
      lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("depth,count", [(18, 11_689_512), (34, 21_797_672),
                                         (50, 25_557_032), (101, 44_549_160)])
def test_parameter_counts_match_torchvision(depth, count):
  fc = ((512 if depth < 50 else 2048) + 1) * 1000  # ImageNet head, not built
  assert _param_count(resnet(depth)) + fc == count


@pytest.mark.parametrize("size", [224, 256])
@pytest.mark.parametrize("output_stride", [32, 16])
def test_rapoolnet_output_shapes(size, output_stride):
  model = rapool_net.RAPoolNet(backbone=resnet(50, output_stride=output_stride))
  out = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((2, size, size, 3)))[0])
  g = size // output_stride
  assert out["features"].shape == (2, g, g, 2048)
  assert out["score_map"].shape == (2, g, g)
  assert out["seg_logits"].shape == (2, size, size, 2)
  assert out["logits"].shape == (2, 2)
  assert out["pooled"].shape == (2, 2048)


def test_width_multiplier_and_tiny_variant():
  m = resnet("tiny", width=0.0625, output_stride=8)
  y, _ = m.init_with_output(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert y.shape == (1, 4, 4, 32)  # 64/16 * 8 channels, 32/8 grid


def test_bad_depth_and_stride_are_clear():
  with pytest.raises(errors.UserError, match="model.depth=19"):
    resnet(19)
  with pytest.raises(errors.UserError, match="output_stride"):
    resnet("tiny", output_stride=4).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_subpixel_upsampling_equals_transposed_conv():
  """Against torch's ConvTranspose2d(k=2s, stride=s, padding=s/2) in numpy."""
  rng = np.random.default_rng(0)
  s = 4
  x = rng.normal(size=(2, 3, 5, 2)).astype(np.float32)
  kernel = rng.normal(size=(2 * s, 2 * s, 2, 3)).astype(np.float32)
  b, h, w, _ = x.shape
  full = np.zeros((b, (h + 1) * s, (w + 1) * s, 3))
  for i in range(h):
    for j in range(w):
      full[:, i * s:i * s + 2 * s, j * s:j * s + 2 * s] += np.einsum(
          "bc,klcd->bkld", x[:, i, j], kernel)
  expected = full[:, s // 2:s // 2 + h * s, s // 2:s // 2 + w * s]
  got = rapool_net.transposed_conv_as_subpixel(jnp.asarray(x),
                                               jnp.asarray(kernel), s)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  # And against XLA's own transposed convolution.
  xla = jax.lax.conv_transpose(jnp.asarray(x), jnp.asarray(kernel[::-1, ::-1]),
                               (s, s), padding=((s + s // 2 - 1,) * 2,) * 2,
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(got, xla, rtol=1e-4, atol=1e-4)


def test_bilinear_initialised_upsampling_preserves_constants():
  up = rapool_net.SegmentationUpsample(stride=32)
  x = jnp.ones((1, 4, 4, 2))
  y, _ = up.init_with_output(jax.random.key(0), x)
  assert y.shape == (1, 128, 128, 2)
  np.testing.assert_allclose(y[0, 16:112, 16:112], 1.0, rtol=1e-5)
  fixed = rapool_net.SegmentationUpsample(stride=32, mode="bilinear")
  y2, v = fixed.init_with_output(jax.random.key(0), x)
  assert y2.shape == (1, 128, 128, 2) and not v


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  model = rapool_net.RAPoolNet(
      backbone=resnet("tiny", width=0.0625, output_stride=8, dtype=jnp.bfloat16))
  out, variables = model.init_with_output(jax.random.key(0),
                                          jnp.zeros((1, 32, 32, 3)))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  assert out["features"].dtype == jnp.bfloat16
  assert out["logits"].dtype == jnp.float32
  assert out["score_map"].dtype == jnp.float32
