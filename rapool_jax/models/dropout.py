"""Dropout that draws fewer, or cheaper, random bits per element (opt-in:
``config.systems.dropout_rng`` / ``dropout_bits``; the default is ``nn.Dropout``).

Random bits are a visible share of the train step (``benchmarks/README.md``,
the H200 profile). ``bits=32`` is flax's ``nn.Dropout``, bit for bit. With
16 or 8, each 32-bit random word decides 2 or 4 elements; the rate is then
quantised to a multiple of ``2**-bits`` and kept activations are
scaled by the realised keep probability, so the expected output is the input.

``rng="hash"`` replaces threefry's 20 rounds per word by a keyed integer hash
of each element's index (``hashed_bits``: about 20 integer instructions per
element against threefry's 75 on a GPU). It reads nothing but a 64-bit key,
so XLA fuses it into the kernels that apply the mask, forward and backward:
the mask is never written to memory. It is for masks, where decisions must
look independent (``tests/test_dropout.py`` checks rate, neighbours, channels
and keys), not cryptographic strength.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from rapool_jax import errors


def quantised_rate(rate: float, bits: int) -> float:
  """The drop probability that ``bits``-bit draws realise for ``rate``."""
  if bits == 32:
    return rate
  return round(rate * 2**bits) / 2**bits


def check_dropout(rate: float, bits: int, rng: str = "threefry") -> None:
  """Raises ValueError for settings this module cannot honour."""
  errors.check_choice("config.systems.dropout_rng", rng, ("threefry", "hash"))
  errors.check_choice("config.systems.dropout_bits", bits, (8, 16, 32))
  if rng == "hash" and bits != 32:
    raise errors.UserError(
        f"config.systems.dropout_bits={bits!r} with "
        "config.systems.dropout_rng='hash': the hash always makes "
        "32 bits per element (it costs no memory): use 32, or "
        "fewer with config.systems.dropout_rng='threefry'")
  errors.check_range("config.model.dropout_rate", rate, 0, 1, high_open=True)
  if rate > 0 and quantised_rate(rate, bits) in (0.0, 1.0):
    raise errors.UserError(f"config.model.dropout_rate={rate!r} rounds to "
                           f"{quantised_rate(rate, bits):g} with "
                           f"config.systems.dropout_bits={bits}: use more bits")


def _small_uniform_bits(key, shape, bits: int):
  """Uniform ``uint8``/``uint16`` ``shape``, cut from 32-bit random words."""
  size = math.prod(shape)
  per_word = 32 // bits
  words = jax.random.bits(key, (-(-size // per_word),), jnp.uint32)
  small = lax.bitcast_convert_type(words, jnp.dtype(f"uint{bits}"))
  return small.reshape(-1)[:size].reshape(shape)


def _mix32(x):
  """A 32-bit integer mixer with full avalanche (Wellons' "lowbias32")."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def hashed_bits(key, shape) -> jax.Array:
  """Uniform ``uint32`` ``shape`` from a hash of each element's index.

  ``key``: a JAX PRNG key; 64 bits drawn from it (one threefry call) key the
  hash. Within a row of the leading (batch) axis the index is row-major; the
  row enters the second round's key, so a batch of any size works as long
  as one row has fewer than 2**32 elements. Indices are global, so under
  ``jit`` with a sharded batch every device computes its own slice of the
  same array.
  """
  if not shape:
    raise ValueError("hashed dropout needs an array with a batch axis")
  row_size = math.prod(shape[1:])
  if row_size >= 2**32:
    raise ValueError(f"hashed dropout: {row_size} elements per example in "
                     f"{shape}; the index hash counts to 2**32")
  k0, k1 = jax.random.bits(key, (2,), jnp.uint32)
  index = lax.broadcasted_iota(jnp.uint32, (shape[0], row_size), 1).reshape(
      shape)
  # Golden-ratio steps spread consecutive rows over the 32-bit key space.
  row_key = k1 + lax.broadcasted_iota(jnp.uint32, shape, 0) * jnp.uint32(
      0x9E3779B9)
  # Two keyed rounds: the first spreads the counter, the second decorrelates
  # keys and rows (one round, mix(index + k), would make the masks of keys k
  # and k + 1 copies shifted by one element).
  return _mix32(_mix32(index ^ k0) + row_key)


class Dropout(nn.Module):
  """Inverted dropout on ``[..., C]`` with ``bits`` random bits per element.

  Attributes:
    rate: drop probability (quantised to ``2**-bits`` for 8 and 16 bits).
    bits: 32 (flax's ``nn.Dropout``), 16 or 8.
    rng: "threefry" (``jax.random``) or "hash" (``hashed_bits``, 32 bits).
    deterministic: no masking when true.
  """

  rate: float
  bits: int = 32
  rng: str = "threefry"
  deterministic: bool | None = None

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None):
    deterministic = nn.merge_param("deterministic", self.deterministic,
                                   deterministic)
    if self.rate == 0.0 or deterministic:
      return inputs
    rng = self.make_rng("dropout")
    if self.rng == "hash":
      # A rate within 2**-33 of 1 still drops all but one value in 2**32.
      threshold = min(round(self.rate * 2**32), 2**32 - 1)
      keep_prob = 1.0 - threshold / 2**32
      mask = hashed_bits(rng, inputs.shape) >= jnp.uint32(threshold)
    elif self.bits == 32:
      keep_prob = 1.0 - self.rate
      mask = jax.random.bernoulli(rng, p=keep_prob, shape=inputs.shape)
    else:
      threshold = round(self.rate * 2**self.bits)
      keep_prob = 1.0 - threshold / 2**self.bits
      mask = _small_uniform_bits(rng, inputs.shape, self.bits) >= threshold
    return lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))
