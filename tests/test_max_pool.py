"""The max pool implementations agree on values and gradients; "auto"
picks slices for GPUs and reduce_window elsewhere."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rapool_jax import config_lib
from rapool_jax.models import max_pool as max_pool_lib
from rapool_jax.models import rapool_net


@pytest.mark.parametrize("window,strides,padding", [
    ((3, 3), (2, 2), ((1, 1), (1, 1))),   # the ResNet stem's
    ((2, 2), (2, 2), ((0, 0), (0, 0))),   # VGG's
    ((3, 3), (1, 1), ((1, 1), (1, 1))),   # VGG's below output stride 32
])
def test_slice_max_pool_matches_flax_values_and_gradient(window, strides,
                                                         padding):
  rng = np.random.default_rng(0)
  # Small integers: most windows hold ties, where the gradient must go to
  # the first maximum, as select_and_scatter sends it.
  x = jnp.asarray(rng.integers(-2, 3, (2, 13, 12, 5)).astype(np.float32))
  want, want_vjp = jax.vjp(lambda x: nn.max_pool(x, window, strides, padding),
                           x)
  got, got_vjp = jax.vjp(
      lambda x: max_pool_lib.max_pool(x, window, strides, padding, "slices"),
      x)
  np.testing.assert_array_equal(got, want)
  dy = jnp.asarray(rng.normal(size=want.shape).astype(np.float32))
  (want_dx,), (got_dx,) = want_vjp(dy), got_vjp(dy)
  np.testing.assert_array_equal(got_dx != 0, want_dx != 0)
  np.testing.assert_allclose(got_dx, want_dx, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backbone", ["resnet", "vgg11"])
def test_models_train_the_same_with_either_max_pool(backbone):
  config = config_lib.base_config()
  config.model.update(backbone=backbone, depth="tiny", width=0.125,
                      dropout_rate=0.0)
  images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))

  def loss_and_grads(impl):
    config.model.max_pool = impl
    model = rapool_net.build_model(config.model)
    variables = jax.jit(model.init)(jax.random.key(1), images)

    def loss(params):
      out, _ = model.apply({**variables, "params": params}, images,
                           train=True, mutable=["batch_stats"])
      return jnp.sum(out["logits"] ** 2) + jnp.mean(out["seg_logits"])
    return jax.jit(jax.value_and_grad(loss))(variables["params"])

  (want, want_g), (got, got_g) = (loss_and_grads("reduce_window"),
                                  loss_and_grads("slices"))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Compiled separately, sums may associate differently: float noise only.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-5),
               got_g, want_g)


def _stem_pool_grad(impl):
  pool = lambda x: max_pool_lib.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)),
                                         impl)
  return jax.jit(jax.grad(lambda x: jnp.sum(pool(x) ** 2)))


@pytest.mark.parametrize("platform,reduce_window", [("cpu", True),
                                                    ("cuda", False),
                                                    ("rocm", False),
                                                    ("tpu", True)])
def test_auto_max_pool_lowers_one_implementation_per_platform(platform,
                                                              reduce_window):
  x = jnp.zeros((2, 16, 16, 4))
  text = _stem_pool_grad("auto").trace(x).lower(
      lowering_platforms=(platform,)).as_text()
  assert ("select_and_scatter" in text) == reduce_window
  assert ("reduce_window" in text) == reduce_window


def test_auto_max_pool_on_cpu_is_flax_bit_for_bit_with_no_branch():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.integers(-2, 3, (2, 15, 14, 3)).astype(np.float32))
  np.testing.assert_array_equal(_stem_pool_grad("auto")(x),
                                _stem_pool_grad("reduce_window")(x))
  compiled = _stem_pool_grad("auto").lower(x).compile().as_text()
  assert " conditional(" not in compiled


def test_unknown_max_pool_is_named():
  config = config_lib.base_config()
  config.model.max_pool = "avg"
  with pytest.raises(ValueError, match="model.max_pool='avg'"):
    rapool_net.build_model(config.model)


def test_default_model_keeps_xla_max_pool_on_gpus_too():
  # The sliced form timed 0.4% slower on an H200 (benchmarks/README.md).
  config = config_lib.base_config()
  config.model.update(depth="tiny", width=0.125)
  model = rapool_net.build_model(config.model)
  images = jnp.zeros((2, 32, 32, 3))
  variables = jax.jit(model.init)(jax.random.key(0), images)

  def loss(params):
    out, _ = model.apply({**variables, "params": params}, images, train=True,
                         mutable=["batch_stats"],
                         rngs={"dropout": jax.random.key(1)})
    return jnp.sum(out["logits"])
  text = jax.jit(jax.grad(loss)).trace(variables["params"]).lower(
      lowering_platforms=("cuda",)).as_text()
  assert "select_and_scatter" in text
