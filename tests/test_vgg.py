"""VGG backbone: torchvision sizes, shapes, output stride, weight layout."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rapool_jax import errors
from rapool_jax import weight_files
from rapool_jax.models import rapool_net
from rapool_jax.models import vgg as vgg_lib


def _init_shapes(module, size=64):
  return jax.eval_shape(
      lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("depth,batch_norm,count", [
    (16, False, 14_714_688),   # torchvision vgg16().features
    (16, True, 14_723_136),    # vgg16_bn().features: + BN scale/bias
    (11, False, 9_220_480),
    (19, False, 20_024_384),
])
def test_parameter_counts_match_torchvision_features(depth, batch_norm, count):
  variables = _init_shapes(vgg_lib.vgg(depth, batch_norm=batch_norm))
  assert _count(variables["params"]) == count
  assert ("batch_stats" in variables) == batch_norm


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_output_stride_and_width(output_stride):
  model = vgg_lib.vgg(16, width=0.25, output_stride=output_stride)
  y = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((2, 224, 224, 3)))[0])
  g = 224 // output_stride
  assert y.shape == (2, g, g, 128)


def test_dilation_keeps_the_kernels_of_stride_32():
  """Output stride 16/8 only dilate: same parameter tree as stride 32."""
  shapes = [jax.tree.map(lambda x: x.shape, _init_shapes(
      vgg_lib.vgg(16, width=0.125, output_stride=s))) for s in (32, 16, 8)]
  assert shapes[0] == shapes[1] == shapes[2]


def test_rapoolnet_with_vgg_backbone():
  model = rapool_net.RAPoolNet(backbone=vgg_lib.vgg(16, width=0.125))
  out = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((2, 224, 224, 3)))[0])
  assert out["features"].shape == (2, 7, 7, 64)
  assert out["score_map"].shape == (2, 7, 7)
  assert out["seg_logits"].shape == (2, 224, 224, 2)
  assert out["pooled"].shape == (2, 64)


def test_train_flags_dropout_and_frozen_batch_norm():
  blocks = ((4,), (8,))  # two blocks: the flags, not the depth, are tested
  model = vgg_lib.VGG(blocks=blocks, dropout_rate=0.5)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  variables = model.init(jax.random.key(0), x)
  rngs = {"dropout": jax.random.key(2)}
  # bn_train=False: no statistics update, and only dropout differs from eval.
  y_frozen = model.apply(variables, x, train=True, bn_train=False, rngs=rngs)
  _, updates = model.apply(variables, x, train=True, rngs=rngs,
                           mutable=["batch_stats"])
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                         variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree.leaves(changed))
  y_eval = model.apply(variables, x, train=False)
  assert not np.allclose(y_frozen, y_eval)  # dropout on
  model_nodrop = vgg_lib.VGG(blocks=blocks, dropout_rate=0.0)
  np.testing.assert_allclose(
      model_nodrop.apply(variables, x, train=True, bn_train=False), y_eval,
      rtol=1e-5, atol=1e-6)


def _torch_layout_forward(state_dict, blocks, batch_norm, x_nchw):
  """torchvision ``VGG.features`` in eval mode, written from its definition."""
  conv = lambda x, w, b: jax.lax.conv_general_dilated(
      x, w, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NCHW", "OIHW", "NCHW")) + b[None, :, None, None]
  index = 0
  for convs in blocks:
    for _ in convs:
      x = conv(x_nchw if index == 0 else x,
               state_dict[f"features.{index}.weight"],
               state_dict[f"features.{index}.bias"])
      index += 1
      if batch_norm:
        p = lambda k: state_dict[f"features.{index}.{k}"][None, :, None, None]
        x = (x - p("running_mean")) / np.sqrt(p("running_var") + 1e-5)
        x = x * p("weight") + p("bias")
        index += 1
      x = jnp.maximum(x, 0)
      index += 1
    x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2),
                              (1, 1, 2, 2), "VALID")
    index += 1
  return x


@pytest.mark.parametrize("batch_norm", [False, True])
def test_load_reproduces_torch_layout_forward(batch_norm):
  blocks = ((4,), (8,), (8, 8), (16, 16), (16, 16))  # VGG-11 shape, narrow
  model = vgg_lib.VGG(blocks=blocks, batch_norm=batch_norm)
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  variables = model.init(jax.random.key(0), x)
  rng = np.random.default_rng(1)
  state_dict, cin = {}, 3
  for name, prefix in vgg_lib.torchvision_names(variables["params"]).items():
    b, i = map(int, re.fullmatch(r"(?:conv|bn)(\d)_(\d)", name).groups())
    cout = blocks[b - 1][i - 1]
    if name.startswith("conv"):
      state_dict[f"{prefix}.weight"] = rng.normal(
          0, 0.3, (cout, cin, 3, 3)).astype(np.float32)
      state_dict[f"{prefix}.bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
      cin = cout
    else:
      for k, v in (("weight", rng.uniform(0.5, 1.5, cout)),
                   ("bias", rng.normal(0, 0.1, cout)),
                   ("running_mean", rng.normal(0, 0.1, cout)),
                   ("running_var", rng.uniform(0.5, 2.0, cout))):
        state_dict[f"{prefix}.{k}"] = v.astype(np.float32)
      state_dict[f"{prefix}.num_batches_tracked"] = np.array(7)
  state_dict["classifier.0.weight"] = np.zeros((10, 10), np.float32)
  loaded = vgg_lib.load(variables, state_dict)
  y = model.apply(loaded, x, train=False)
  ref = _torch_layout_forward(state_dict, blocks, batch_norm,
                              np.transpose(x, (0, 3, 1, 2)))
  np.testing.assert_allclose(y, np.transpose(ref, (0, 2, 3, 1)),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("depth,batch_norm,convs", [
    # The conv layers' indices in torchvision's vgg*().features.
    (11, False, (0, 3, 6, 8, 11, 13, 16, 18)),
    (11, True, (0, 4, 8, 11, 15, 18, 22, 25)),
    (16, False, (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)),
])
def test_torchvision_names(depth, batch_norm, convs):
  params = _init_shapes(vgg_lib.vgg(depth, batch_norm=batch_norm,
                                    width=0.0625))["params"]
  names = vgg_lib.torchvision_names(params)
  conv_names = sorted((n for n in names if n.startswith("conv")),
                      key=lambda n: tuple(map(int, n[4:].split("_"))))
  assert [names[n] for n in conv_names] == [f"features.{i}" for i in convs]
  bn_names = [n.replace("conv", "bn") for n in conv_names] if batch_norm else []
  assert sorted(set(names) - set(conv_names)) == sorted(bn_names)
  assert all(names[b] == f"features.{i + 1}" for b, i in zip(bn_names, convs))


def test_load_names_what_does_not_fit():
  model = vgg_lib.vgg(11, batch_norm=False, width=0.0625)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(weight_files.MismatchError) as excinfo:
    vgg_lib.load(variables, {"features.0.weight": np.zeros((4, 3, 5, 5)),
                             "classifier.6.bias": np.zeros(1000)}, "vgg.pth")
  lines = str(excinfo.value).splitlines()
  assert lines[0] == ("vgg.pth does not fit a VGG of 8 convs (torchvision "
                      "names): 15 missing, 1 wrong shape")
  assert lines[1].startswith("  missing: features.0.bias [4], ")
  assert lines[2] == "  wrong shape: features.0.weight file [4, 3, 5, 5] vs model [4, 3, 3, 3]"


def test_bad_depth_and_stride_are_clear():
  with pytest.raises(errors.UserError, match="VGG depth '17'"):
    vgg_lib.vgg(17)
  with pytest.raises(errors.UserError, match="output_stride"):
    vgg_lib.vgg(11, output_stride=4).init(jax.random.key(0),
                                          jnp.zeros((1, 32, 32, 3)))
