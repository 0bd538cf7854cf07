"""Dropout with 8, 16 or 32 random bits per decision."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rapool_jax import config_lib
from rapool_jax.models import dropout as dropout_lib
from rapool_jax.models import rapool_net


class _Net(nn.Module):
  flax_dropout: bool = False
  bits: int = 32
  rate: float = 0.2

  @nn.compact
  def __call__(self, x):
    if self.flax_dropout:
      return nn.Dropout(self.rate, deterministic=False, name="dropout1")(x)
    return dropout_lib.Dropout(self.rate, self.bits, deterministic=False,
                               name="dropout1")(x)


def _apply(x, seed=3, **kwargs):
  return _Net(**kwargs).apply({}, x, rngs={"dropout": jax.random.key(seed)})


def test_32_bits_is_flax_dropout_bit_for_bit():
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 64))
  np.testing.assert_array_equal(_apply(x), _apply(x, flax_dropout=True))


@pytest.mark.parametrize("bits", [8, 16])
def test_fewer_bits_keep_the_expectation(bits):
  x = jnp.ones((32, 32, 32, 64))   # 2 M decisions
  y = np.asarray(_apply(x, bits=bits))
  rate = dropout_lib.quantised_rate(0.2, bits)
  assert abs(rate - 0.2) <= 2.0**-(bits + 1)
  dropped = (y == 0).mean()
  # 5 standard deviations of a binomial mean over 2 M draws: about 0.0014.
  assert abs(dropped - rate) < 0.0015
  # Kept values are scaled by the realised keep probability, not 1/0.8.
  np.testing.assert_allclose(y[y != 0], 1 / (1 - rate), rtol=1e-6)
  assert abs(y.mean() - 1.0) < 0.003


def test_fewer_bits_draw_fewer_random_words():
  x = jnp.ones((8, 8, 8, 64))

  def count(jaxpr):
    total = 0
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "random_bits":
        total += sum(int(np.prod(v.aval.shape)) for v in eqn.outvars)
      for param in eqn.params.values():
        total += count(getattr(param, "jaxpr", param)) if hasattr(
            getattr(param, "jaxpr", param), "eqns") else 0
    return total

  def words(bits):
    # 32-bit random words drawn, read off the jaxpr (nested jits included).
    return count(jax.make_jaxpr(lambda x: _apply(x, bits=bits))(x).jaxpr)

  assert words(32) == 4 * words(8) == 2 * words(16) == x.size


def test_masks_differ_across_positions_and_keys():
  x = jnp.ones((2, 8, 8, 64))
  a, b = _apply(x, bits=8), _apply(x, seed=4, bits=8)
  assert not np.array_equal(a, b)
  assert not np.array_equal(a[0], a[1])


def test_deterministic_and_rate_zero_are_the_identity():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
  module = dropout_lib.Dropout(0.5, 8)
  np.testing.assert_array_equal(module.apply({}, x, deterministic=True), x)
  zero = dropout_lib.Dropout(0.0, 8, deterministic=False)
  np.testing.assert_array_equal(zero.apply({}, x), x)


@pytest.mark.parametrize("rate,bits,match", [
    (0.2, 12, "model.dropout_bits=12"),
    (0.001, 8, "rounds to 0"),
    (0.999, 8, "rounds to 1"),
    (1.0, 32, "model.dropout_rate=1.0"),
])
def test_bad_dropout_settings_are_named(rate, bits, match):
  config = config_lib.base_config()
  config.model.dropout_rate = rate
  config.model.dropout_bits = bits
  with pytest.raises(ValueError, match=match):
    rapool_net.build_model(config.model)


def test_configs_saved_before_dropout_bits_still_build():
  config = config_lib.base_config()
  del config.model["dropout_bits"]
  model = rapool_net.build_model(config.model)
  assert model.backbone.dropout_bits == 32
