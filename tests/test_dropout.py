"""Dropout with 8, 16 or 32 random bits per decision, or hashed masks."""

import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rapool_jax import config_lib
from rapool_jax import errors
from rapool_jax.models import dropout as dropout_lib
from rapool_jax.models import rapool_net


class _Net(nn.Module):
  flax_dropout: bool = False
  bits: int = 32
  rate: float = 0.2
  rng: str = "threefry"

  @nn.compact
  def __call__(self, x):
    if self.flax_dropout:
      return nn.Dropout(self.rate, deterministic=False, name="dropout1")(x)
    return dropout_lib.Dropout(self.rate, self.bits, self.rng,
                               deterministic=False, name="dropout1")(x)


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


@pytest.mark.parametrize("overrides,match", [
    (dict(dropout_bits=12), "systems.dropout_bits=12"),
    (dict(dropout_rate=0.001, dropout_bits=8), "rounds to 0"),
    (dict(dropout_rate=0.999, dropout_bits=8), "rounds to 1"),
    (dict(dropout_rate=1.0), "model.dropout_rate=1.0"),
    (dict(dropout_rng="philox"), "systems.dropout_rng='philox'"),
    (dict(dropout_rng="hash", dropout_bits=8),
     "systems.dropout_bits=8 with config.systems.dropout_rng='hash'"),
])
def test_bad_dropout_settings_are_named(overrides, match):
  config = config_lib.base_config()
  for key, value in overrides.items():
    (config.model if key == "dropout_rate" else config.systems)[key] = value
  with pytest.raises(errors.UserError, match=match):
    rapool_net.build_model(config.model, config.systems)


def test_default_dropout_is_flax_and_systems_choose_the_others():
  config = config_lib.base_config()
  x = jnp.ones((4, 8, 8, 16))

  def masks(**systems):
    config.systems.update(systems)
    layer = rapool_net.build_model(config.model, config.systems).backbone.dropout
    out = layer(rate=0.5, deterministic=False).apply(
        {}, x, rngs={"dropout": jax.random.key(1)})
    return layer, np.asarray(out) == 0

  layer, threefry = masks()
  assert layer is nn.Dropout
  layer, hashed = masks(dropout_rng="hash")
  assert layer.func is dropout_lib.Dropout and layer.keywords == {
      "bits": 32, "rng": "hash"}
  layer, eight_bit = masks(dropout_rng="threefry", dropout_bits=8)
  assert layer.keywords == {"bits": 8, "rng": "threefry"}
  # Other random streams: other units dropped, at about the same rate.
  for other in (hashed, eight_bit):
    assert not np.array_equal(other, threefry)
    assert abs(other.mean() - threefry.mean()) < 0.05


def _correlation(a, b):
  a, b = a - a.mean(), b - b.mean()
  return float((a * b).mean() / np.sqrt((a * a).mean() * (b * b).mean()))


def test_hashed_bits_are_uniform_and_look_independent():
  shape = (16, 32, 32, 64)   # 1 M words
  bits = np.asarray(dropout_lib.hashed_bits(jax.random.key(0), shape))
  assert bits.dtype == np.uint32 and bits.shape == shape
  # Every bit position is a fair coin (5 sigma over 1 M draws: 0.0025).
  per_bit = np.unpackbits(bits.view(np.uint8)).reshape(-1, 32).mean(0)
  np.testing.assert_allclose(per_bit, 0.5, atol=0.0025)
  keep = (bits >= round(0.2 * 2**32)).astype(np.float64)
  other_key = (np.asarray(dropout_lib.hashed_bits(jax.random.key(1), shape))
               >= round(0.2 * 2**32)).astype(np.float64)
  # Neighbouring decisions along each axis, and two keys, are uncorrelated
  # (5 sigma of a correlation over 1 M pairs: 0.005).
  pairs = {"channel": (keep[..., 1:], keep[..., :-1]),
           "width": (keep[:, :, 1:], keep[:, :, :-1]),
           "height": (keep[:, 1:], keep[:, :-1]),
           "batch": (keep[1:], keep[:-1]),
           "key": (keep, other_key)}
  for name, (a, b) in pairs.items():
    assert abs(_correlation(a, b)) < 0.005, name


def test_hashed_bits_take_any_batch_but_count_one_example_to_2_32():
  key = jax.random.key(0)
  # 4.6 G elements in all: the batch index is not part of the counter.
  big = jax.eval_shape(lambda k: dropout_lib.hashed_bits(k, (70_000, 256, 256)),
                       key)
  assert big.shape == (70_000, 256, 256) and big.dtype == jnp.uint32
  with pytest.raises(ValueError, match="4294967296 elements per example"):
    jax.eval_shape(lambda k: dropout_lib.hashed_bits(k, (2, 2**16, 2**16)),
                   key)


def test_hash_dropout_keeps_the_expectation_and_draws_two_words():
  x = jnp.ones((32, 32, 32, 64))   # 2 M decisions
  apply = lambda x: _apply(x, rng="hash")
  y = np.asarray(apply(x))
  assert abs((y == 0).mean() - 0.2) < 0.0015
  np.testing.assert_allclose(y[y != 0], 1 / 0.8, rtol=1e-6)
  # The key is the only random draw: the mask is a function of the index.
  jaxpr = jax.make_jaxpr(apply)(x).jaxpr
  drawn = [v.aval.shape for eqn in jaxpr.eqns
           if eqn.primitive.name in ("random_bits", "threefry2x32")
           for v in eqn.outvars]
  assert drawn and all(int(np.prod(s)) <= 2 for s in drawn), drawn


def test_hash_dropout_gradient_uses_the_forward_mask():
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 32))
  y, vjp = jax.vjp(lambda x: _apply(x, rng="hash"), x)
  (grad,) = vjp(jnp.ones_like(y))
  kept = np.asarray(y) != 0
  np.testing.assert_allclose(np.asarray(grad), kept / 0.8, rtol=1e-6)
  # A new key, a new mask.
  assert not np.array_equal(y, _apply(x, seed=4, rng="hash"))


def test_hashed_bits_do_not_depend_on_how_the_batch_is_sharded():
  # Global indices: each device hashes its own slice of the same array.
  code = """
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from rapool_jax.models import dropout
mesh = jax.make_mesh((8,), ("data",))
f = lambda x, k: x + dropout.hashed_bits(k, x.shape)
x = np.zeros((16, 4, 4, 8), np.uint32)
sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
key = jax.random.key(5)
one = np.asarray(jax.jit(f)(x, key))
eight = jax.jit(f)(sharded, key)
assert len(eight.sharding.device_set) == 8
np.testing.assert_array_equal(one, np.asarray(eight))
print("ok")
"""
  env = dict(os.environ,
             XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code], env=env, text=True,
                        capture_output=True, timeout=120,
                        cwd=pathlib.Path(__file__).resolve().parents[1])
  assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
