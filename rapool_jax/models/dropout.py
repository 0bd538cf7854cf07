"""Dropout that can draw fewer random bits per element.

Dropout after each ResNet stage masks about 1.5 M activations per 224 px
image, and random bits are a visible share of the train step
(``benchmarks/step_profile.py``). With ``bits=32`` this is flax's
``nn.Dropout``, bit for bit (same ``make_rng`` path, same mask). With 16 or 8,
each 32-bit random word decides 2 or 4 elements, so the PRNG runs 2 or 4
times less. The rate is then quantised to a multiple of ``2**-bits``, and
kept activations are scaled by the realised keep probability, so the
expected output still equals the input.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

DROPOUT_BITS = (8, 16, 32)


def quantised_rate(rate: float, bits: int) -> float:
  """The drop probability that ``bits``-bit draws realise for ``rate``."""
  if bits == 32:
    return rate
  return round(rate * 2**bits) / 2**bits


def check_dropout(rate: float, bits: int) -> None:
  """Raises ValueError for a rate/bits pair this module cannot honour."""
  if bits not in DROPOUT_BITS:
    raise ValueError(f"model.dropout_bits={bits!r}: choose 8, 16 or 32")
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"model.dropout_rate={rate!r}: must be in [0, 1)")
  if rate > 0 and quantised_rate(rate, bits) in (0.0, 1.0):
    raise ValueError(f"model.dropout_rate={rate!r} rounds to "
                     f"{quantised_rate(rate, bits):g} with "
                     f"model.dropout_bits={bits}: use more bits")


def _small_uniform_bits(key, shape, bits: int):
  """Uniform ``uint8``/``uint16`` ``shape``, cut from 32-bit random words."""
  size = math.prod(shape)
  per_word = 32 // bits
  words = jax.random.bits(key, (-(-size // per_word),), jnp.uint32)
  small = lax.bitcast_convert_type(words, jnp.dtype(f"uint{bits}"))
  return small.reshape(-1)[:size].reshape(shape)


class Dropout(nn.Module):
  """Inverted dropout on ``[..., C]`` with ``bits`` random bits per element.

  Attributes:
    rate: drop probability (quantised to ``2**-bits`` for 8 and 16 bits).
    bits: 32 (flax's ``nn.Dropout``), 16 or 8.
    deterministic: no masking when true.
  """

  rate: float
  bits: int = 32
  deterministic: bool | None = None

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None):
    deterministic = nn.merge_param("deterministic", self.deterministic,
                                   deterministic)
    if self.rate == 0.0 or deterministic:
      return inputs
    check_dropout(self.rate, self.bits)
    rng = self.make_rng("dropout")
    if self.bits == 32:
      keep_prob = 1.0 - self.rate
      mask = jax.random.bernoulli(rng, p=keep_prob, shape=inputs.shape)
    else:
      threshold = round(self.rate * 2**self.bits)
      keep_prob = 1.0 - threshold / 2**self.bits
      mask = _small_uniform_bits(rng, inputs.shape, self.bits) >= threshold
    return lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))
