"""rapool_jax: region average pooling for dermoscopy classification in JAX/Flax."""

__version__ = "0.1.0"
