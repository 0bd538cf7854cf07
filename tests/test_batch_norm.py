"""The fused BatchNorm: flax's variables and values, the same gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rapool_jax.models import batch_norm
from rapool_jax.models.resnet import resnet as make_resnet


def _inputs(dtype, seed=0, shape=(4, 6, 6, 5)):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(1.0, 2.0, shape), dtype)
  dy = jnp.asarray(rng.normal(size=shape), jnp.float32)
  params = {"scale": jnp.asarray(rng.normal(size=shape[-1]), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=shape[-1]), jnp.float32)}
  stats = {"mean": jnp.asarray(rng.normal(size=shape[-1]), jnp.float32),
           "var": jnp.asarray(rng.uniform(0.5, 2, shape[-1]), jnp.float32)}
  return x, dy, params, stats


def _loss_and_grads(layer, x, dy, params, stats):
  """Output, batch_stats updates and (d params, d x) of sum(layer(x) * dy)."""
  def loss(params, x):
    y, updates = layer.apply({"params": params, "batch_stats": stats}, x,
                             mutable=["batch_stats"])
    return jnp.sum(y.astype(jnp.float32) * dy), (y, updates)
  (_, (y, updates)), grads = jax.value_and_grad(
      loss, (0, 1), has_aux=True)(params, x)
  return y, updates, grads


@pytest.fixture(params=["cpu", "gpu"])
def sums(request, monkeypatch):
  """Which forms of the float32 sums run: the CPU's (flax's two means, a
  stacked pair sum), or the GPU's and TPU's (one complex reduction each),
  forced here on the CPU. Yields a count of the GPU forms' calls."""
  calls = {"means": 0, "pair": 0}

  def counted(name, fn):
    def wrapper(*args, **kwargs):
      calls[name] += 1
      return fn(*args, **kwargs)
    return wrapper

  if request.param == "gpu":
    monkeypatch.setattr(batch_norm, "_flax_means", counted(
        "means", batch_norm._one_reduction_means))
    monkeypatch.setattr(batch_norm, "_stacked_pair_sum", counted(
        "pair", batch_norm._complex_pair_sum))
  yield request.param, calls


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_fused_matches_flax_values_statistics_and_gradients(
    dtype, relu, with_residual, train, sums):
  x, dy, params, stats = _inputs(dtype)
  # A residual of the block's input, so its gradient is tested with x's.
  residual = (lambda x: jnp.flip(x, 1) * 0.5) if with_residual else (
      lambda x: None)
  kwargs = dict(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                dtype=dtype)
  act = jax.nn.relu if relu else (lambda y: y)

  class Ref(nn.Module):
    @nn.compact
    def __call__(self, x):
      y = nn.BatchNorm(name="bn", **kwargs)(x)
      r = residual(x)
      return act(y if r is None else y + r)

  class Fused(nn.Module):
    @nn.compact
    def __call__(self, x):
      return batch_norm.BatchNorm(relu=relu, name="bn", **kwargs)(
          x, residual(x))

  wrap = lambda tree: {"bn": tree}  # noqa: E731
  y_ref, up_ref, g_ref = _loss_and_grads(Ref(), x, dy, wrap(params),
                                         wrap(stats))
  y_new, up_new, g_new = _loss_and_grads(Fused(), x, dy, wrap(params),
                                         wrap(stats))
  assert y_new.dtype == y_ref.dtype == dtype
  form, calls = sums
  if form == "cpu":
    np.testing.assert_array_equal(y_new, y_ref)
    jax.tree.map(np.testing.assert_array_equal, up_new, up_ref)
  else:  # one reduction for both statistics: the sums may round otherwise
    assert calls["means"] == train and calls["pair"] == (train and relu)
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.asarray(y_new, np.float32),
                               np.asarray(y_ref, np.float32), rtol=tol,
                               atol=tol)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                         atol=1e-6),
                 up_new, up_ref)
  (dp_new, dx_new), (dp_ref, dx_ref) = g_new, g_ref
  assert dx_new.dtype == dtype
  if dtype == jnp.float32:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                         atol=1e-5),
                 (dp_new, dx_new), (dp_ref, dx_ref))
  else:
    # Parameter gradients are float32 sums; dx is rounded to bf16 (8 bits).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2,
                                                         atol=1e-2),
                 dp_new, dp_ref)
    np.testing.assert_allclose(np.asarray(dx_new, np.float32),
                               np.asarray(dx_ref, np.float32), rtol=2e-2,
                               atol=2e-2)


def test_variables_are_flax_batch_norms():
  x = jnp.ones((2, 3, 3, 4))
  ref = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
  new = batch_norm.BatchNorm(use_running_average=False, relu=True).init(
      jax.random.key(0), x)
  assert jax.tree.structure(new) == jax.tree.structure(ref)
  jax.tree.map(np.testing.assert_array_equal, new, ref)


def _plain_batch_norm(x, scale, bias, residual, epsilon, relu):
  """The textbook formula, for autodiff: y, mean, var."""
  mean = x.mean((0, 1, 2))
  var = ((x - mean) ** 2).mean((0, 1, 2))
  y = (x - mean) / jnp.sqrt(var + epsilon) * scale + bias
  if residual is not None:
    y = y + residual
  return (jnp.maximum(y, 0) if relu else y), mean, var


@pytest.mark.parametrize("use_output", [True, False])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("with_residual", [False, True])
def test_gradient_through_the_batch_statistics_is_exact(use_output, relu,
                                                        with_residual, sums):
  # The running averages never carry a gradient, but a caller may: the
  # custom VJP must then add the statistics' own cotangents (and cope with
  # a symbolic-zero cotangent for the output it does not use).
  x, dy, params, _ = _inputs(jnp.float32, seed=1)
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=5), rng.normal(size=5)
  residual = (jnp.asarray(rng.normal(size=x.shape), jnp.float32)
              if with_residual else None)

  def loss(fn):
    def f(x, scale, bias, residual):
      y, mean, var = fn(x, scale, bias, residual)
      out = jnp.sum(y * dy) if use_output else 0.0
      return out + jnp.sum(mean * a) + jnp.sum(var * b)
    return jax.grad(f, (0, 1, 2, 3))(x, params["scale"], params["bias"],
                                     residual)

  got = loss(lambda x, s, c, r: batch_norm.batch_norm_train(
      x, s, c, r, 1e-5, relu, jnp.dtype(jnp.float32)))
  want = loss(lambda x, s, c, r: _plain_batch_norm(x, s, c, r, 1e-5, relu))
  form, calls = sums
  assert form == "cpu" or (calls["means"] == 1 and calls["pair"] == 1)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4,
                                                       atol=1e-5), got, want)


def test_a_dead_channel_gets_no_gradient():
  x, dy, params, stats = _inputs(jnp.float32, seed=3)
  params = {"scale": params["scale"], "bias": params["bias"].at[2].set(-1e3)}

  class Fused(nn.Module):
    @nn.compact
    def __call__(self, x):
      return batch_norm.BatchNorm(use_running_average=False, relu=True,
                                  name="bn")(x)

  y, _, (dp, dx) = _loss_and_grads(Fused(), x, dy, {"bn": params},
                                   {"bn": stats})
  assert not np.any(y[..., 2])
  assert not np.any(dx[..., 2])
  assert dp["bn"]["scale"][2] == 0 and dp["bn"]["bias"][2] == 0


def test_unknown_implementation_names_the_config_key():
  with pytest.raises(ValueError, match="model.batch_norm_impl"):
    batch_norm.norm_layer("cudnn", use_running_average=False)


def test_resnet_fused_and_flax_agree():
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 32, 32, 3)),
                  jnp.float32)
  models = {impl: make_resnet("tiny", width=0.125, batch_norm_impl=impl)
            for impl in batch_norm.BATCH_NORMS}
  variables = models["flax"].init(jax.random.key(0), x)
  assert (jax.tree.structure(models["fused"].init(jax.random.key(0), x))
          == jax.tree.structure(variables))

  def run(model):
    def loss(params):
      y, updates = model.apply({**variables, "params": params}, x, train=True,
                               mutable=["batch_stats"])
      return jnp.sum(jnp.sin(y)), (y, updates)
    return jax.grad(loss, has_aux=True)(variables["params"])

  (g_fused, (y_fused, s_fused)), (g_flax, (y_flax, s_flax)) = (
      run(models["fused"]), run(models["flax"]))
  np.testing.assert_array_equal(y_fused, y_flax)
  jax.tree.map(np.testing.assert_array_equal, s_fused, s_flax)
  # float32 sums in another order, through 12 BatchNorms: compare each
  # gradient at the scale of its largest entry.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max()), g_fused, g_flax)
