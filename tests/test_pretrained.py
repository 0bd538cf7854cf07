"""ImageNet weight loading: parity with transformers, key layouts, clear errors.

The fixture (``scripts/make_resnet_parity_fixture.py``) is a random-init HF
``ResNetForImageClassification`` shaped as torchvision's ResNet-50 at width 1/8,
saved under HF and under torchvision key names, with its outputs.
"""

import functools
import json
import pathlib
import sys

import flax
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from rapool_jax import pretrained
from rapool_jax.models.resnet import resnet

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
FILES = {"hf": FIXTURES / "resnet50_w8_hf.safetensors",
         "torchvision": FIXTURES / "resnet50_w8_torchvision.safetensors"}
REFERENCE = FIXTURES / "resnet50_w8_reference.npz"
WIDTH = 0.125

# The same tensors in both layouts, for the error tests.
CONV = {"torchvision": "layer2.0.conv2.weight",
        "hf": "resnet.encoder.stages.1.layers.0.layer.1.convolution.weight"}
BN_VAR = {"torchvision": "layer4.2.bn3.running_var",
          "hf": "resnet.encoder.stages.3.layers.2.layer.2.normalization.running_var"}
EXTRA = {"torchvision": "layer1.0.conv4.weight",
         "hf": "resnet.encoder.stages.0.layers.0.layer.3.convolution.weight"}


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(REFERENCE))


@pytest.fixture(scope="module")
def tv_variables():
  return pretrained.load_backbone(FILES["torchvision"])[1]


def _state(layout):
  return dict(safetensors.numpy.load_file(FILES[layout]))


def _save(tmp_path, state, name="weights.safetensors"):
  path = tmp_path / name
  safetensors.numpy.save_file(
      {k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
  return path


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _rel_err(actual, expected):
  return float(np.abs(np.asarray(actual) - expected).max()
               / np.abs(expected).max())


@pytest.mark.parametrize("layout", ["hf", "torchvision"])
def test_inspect_infers_depth_width_layout(layout):
  info = pretrained.inspect_weights(FILES[layout])
  assert (info.layout, info.depth, info.block, info.stage_sizes, info.width,
          info.num_classes) == (layout, 50, "bottleneck", (3, 4, 6, 3), WIDTH,
                                10)
  assert info.preprocessing == pretrained.IMAGENET
  assert pretrained.preprocessing_for(FILES[layout]) == pretrained.IMAGENET


@pytest.mark.parametrize("layout", ["hf", "torchvision"])
def test_matches_transformers_reference(layout, reference):
  module, variables = pretrained.load_backbone(FILES[layout], depth=50)
  assert module.width == WIDTH and module.num_classes is None
  with jax.default_matmul_precision("highest"):
    features = jax.jit(functools.partial(module.apply, train=False))(
        variables, jnp.asarray(reference["images"], jnp.float32))
  assert features.shape == reference["features"].shape == (2, 3, 3, 256)
  err = _rel_err(features, reference["features"])
  print(f"{layout}: feature map max rel err {err:.2e}")
  # float32 throughout: 4.8e-7 measured (README); a wrong weight mapping or
  # padding is off by 1e-2 or more, summation order by a few 1e-7.
  assert err < 1e-6
  head = pretrained.load_classifier(FILES[layout])
  logits = np.asarray(features).mean(axis=(1, 2)) @ head["kernel"] + head["bias"]
  err = _rel_err(logits, reference["logits"])
  print(f"{layout}: logits max rel err {err:.2e}")
  assert err < 1e-6


def test_layouts_give_identical_variables(tv_variables):
  _, hf_variables = pretrained.load_backbone(FILES["hf"])
  _assert_trees_equal(hf_variables, tv_variables)
  assert set(tv_variables) == {"params", "batch_stats"}
  assert tv_variables["params"]["conv1"]["kernel"].shape == (7, 7, 3, 8)
  assert tv_variables["params"]["conv1"]["kernel"].dtype == jnp.float32


def test_headless_files_load(tmp_path, tv_variables):
  # timm num_classes=0 / torchvision without fc; HF ResNetModel (no prefix).
  tv = {k: v for k, v in _state("torchvision").items()
        if not k.startswith("fc.")}
  hf = {k[len("resnet."):]: v for k, v in _state("hf").items()
        if k.startswith("resnet.")}
  for name, state in (("tv.safetensors", tv), ("hf.safetensors", hf)):
    path = _save(tmp_path, state, name)
    _assert_trees_equal(pretrained.load_backbone(path)[1], tv_variables)
    assert pretrained.load_classifier(path) is None


def test_bfloat16_safetensors(tmp_path, tv_variables):
  # safetensors.numpy cannot read BF16; write the format by hand.
  state = {k: v.astype(ml_dtypes.bfloat16) if v.dtype.kind == "f" else v
           for k, v in _state("torchvision").items()}
  header, chunks, offset = {}, [], 0
  for key, value in state.items():
    data = value.tobytes()
    dtype = {"bfloat16": "BF16", "int64": "I64"}[value.dtype.name]
    header[key] = {"dtype": dtype, "shape": list(value.shape),
                   "data_offsets": [offset, offset + len(data)]}
    chunks.append(data)
    offset += len(data)
  blob = json.dumps(header).encode()
  path = tmp_path / "bf16.safetensors"
  path.write_bytes(len(blob).to_bytes(8, "little") + blob + b"".join(chunks))
  _, variables = pretrained.load_backbone(path)
  expected = jax.tree.map(
      lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32),
      tv_variables)
  _assert_trees_equal(variables, expected)


@pytest.mark.parametrize("layout", ["torchvision", "hf"])
@pytest.mark.parametrize("defect", ["missing", "unexpected", "wrong_shape"])
def test_mismatch_error_names_file_and_tensor(tmp_path, layout, defect):
  state = _state(layout)
  if defect == "missing":
    del state[BN_VAR[layout]]
    expected = f"missing: {BN_VAR[layout]} [256]"
  elif defect == "unexpected":
    state[EXTRA[layout]] = np.zeros((32, 8, 1, 1), np.float16)
    expected = f"unexpected: {EXTRA[layout]} [32, 8, 1, 1]"
  else:
    state[CONV[layout]] = state[CONV[layout]][:, :15]
    expected = f"wrong shape: {CONV[layout]} file [16, 15, 3, 3] vs model [16, 16, 3, 3]"
  path = _save(tmp_path, state)
  with pytest.raises(pretrained.PretrainedMismatchError) as excinfo:
    pretrained.load_backbone(path)
  message = str(excinfo.value)
  print(message)
  first = message.splitlines()[0]
  assert str(path) in first and "ResNet-50" in first
  assert f"1 {defect.replace('_', ' ')}" in first
  assert expected in message
  assert isinstance(excinfo.value, ValueError)


def test_mismatch_error_lists_everything_at_once(tmp_path):
  state = _state("torchvision")
  del state["bn1.bias"], state["layer3.1.conv1.weight"]
  state["foo.bar"] = np.zeros((2,), np.float32)
  state["layer1.0.downsample.1.running_mean"] = np.zeros((31,), np.float32)
  with pytest.raises(pretrained.PretrainedMismatchError) as excinfo:
    pretrained.load_backbone(_save(tmp_path, state))
  lines = str(excinfo.value).splitlines()
  assert "2 missing, 1 unexpected, 1 wrong shape" in lines[0]
  assert lines[1] == "  missing: bn1.bias [8], layer3.1.conv1.weight [32, 128, 1, 1]"
  assert lines[2] == "  unexpected: foo.bar [2]"
  assert lines[3] == ("  wrong shape: layer1.0.downsample.1.running_mean file "
                      "[31] vs model [32]")


def test_foreign_files_are_rejected(tmp_path):
  path = _save(tmp_path, {"features.0.weight": np.zeros((4, 3, 3, 3))})
  with pytest.raises(pretrained.PretrainedMismatchError, match="not a ResNet"):
    pretrained.load_backbone(path)
  # timm's deep-stem variants share the torchvision names but not the stem.
  state = _state("torchvision")
  state["conv1.0.weight"] = state.pop("conv1.weight")
  with pytest.raises(pretrained.PretrainedMismatchError, match="deep-stem"):
    pretrained.load_backbone(_save(tmp_path, state))
  (tmp_path / "weights.npz").write_bytes(b"x")
  with pytest.raises(ValueError, match="unsupported weights file type"):
    pretrained.load_backbone(tmp_path / "weights.npz")
  with pytest.raises(FileNotFoundError):
    pretrained.load_backbone(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("depth", [18, 101])
def test_depth_mismatch(depth):
  with pytest.raises(pretrained.PretrainedMismatchError) as excinfo:
    pretrained.load_backbone(FILES["torchvision"], depth=depth)
  message = str(excinfo.value)
  assert "ResNet-50" in message and f"depth={depth}" in message
  assert "set model.depth=50" in message
  with pytest.raises(ValueError, match="not a ResNet depth"):
    pretrained.load_backbone(FILES["torchvision"], depth=42)


def test_depth_and_width_default_to_the_files(tv_variables):
  module, variables = pretrained.load_backbone(
      FILES["torchvision"], depth=None, output_stride=16, dropout_rate=0.1)
  assert (module.stage_sizes, module.width, module.output_stride) == (
      (3, 4, 6, 3), WIDTH, 16)
  _assert_trees_equal(variables, tv_variables)
  with pytest.raises(pretrained.PretrainedMismatchError, match="width"):
    pretrained.load_backbone(FILES["torchvision"], width=1.0)


def test_hf_config_with_v1_stride_is_rejected(tmp_path):
  path = _save(tmp_path, _state("hf"))
  (tmp_path / "config.json").write_text(json.dumps(
      {"model_type": "resnet", "downsample_in_bottleneck": True}))
  with pytest.raises(pretrained.PretrainedMismatchError, match="v1.5"):
    pretrained.load_backbone(path)


def test_pth_without_torch_says_so(tmp_path, monkeypatch):
  path = tmp_path / "resnet50.pth"
  path.write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails.
  with pytest.raises(ImportError, match="needs PyTorch") as excinfo:
    pretrained.load_backbone(path)
  assert str(path) in str(excinfo.value)
  assert "\n" not in str(excinfo.value)


def test_pth_with_torch(tmp_path, tv_variables):
  torch = pytest.importorskip(
      "torch", reason="torch not installed: .pth loading not exercised")
  tensors = {k: torch.from_numpy(v.copy())
             for k, v in _state("torchvision").items()}
  plain = tmp_path / "plain.pth"
  torch.save(tensors, plain)
  # A DataParallel training checkpoint: wrapped and "module."-prefixed.
  wrapped = tmp_path / "checkpoint.pt"
  torch.save({"epoch": 3, "state_dict": {f"module.{k}": v
                                         for k, v in tensors.items()}}, wrapped)
  for path in (plain, wrapped):
    _assert_trees_equal(pretrained.load_backbone(path)[1], tv_variables)


def _model_variables(width=WIDTH):
  """A two-branch model's variable tree: backbone + new heads."""
  shapes = jax.eval_shape(lambda: resnet(50, width=width).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  backbone = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  c = resnet(50, width=width).num_features
  heads = {"seg_conv": {"kernel": jnp.ones((1, 1, c, 2)),
                        "bias": jnp.ones((2,))},
           "seg_upsample": {"kernel": jnp.ones((64, 64, 2, 2)),
                            "bias": jnp.ones((2,))},
           "classifier": {"kernel": jnp.ones((c, 2)), "bias": jnp.ones((2,))}}
  return {"params": {"backbone": backbone["params"], **heads},
          "batch_stats": {"backbone": backbone["batch_stats"]}}


def test_load_into_fills_backbone_keeps_heads(tv_variables):
  variables = _model_variables()
  new = pretrained.load_into(variables, FILES["hf"], depth=50)
  _assert_trees_equal(
      {c: new[c]["backbone"] for c in ("params", "batch_stats")}, tv_variables)
  for head in ("seg_conv", "seg_upsample", "classifier"):
    assert new["params"][head] is variables["params"][head]
  # The input is not modified.
  assert not np.any(variables["params"]["backbone"]["conv1"]["kernel"])
  frozen = pretrained.load_into(flax.core.freeze(variables),
                                FILES["torchvision"], depth="50")
  assert isinstance(frozen, flax.core.FrozenDict)
  _assert_trees_equal(flax.core.unfreeze(frozen), new)


def test_one_loader_serves_every_backbone(tv_variables, monkeypatch):
  from rapool_jax import config_lib
  from rapool_jax.models import vgg
  model = config_lib.base_config().model
  model.update(pretrained=str(FILES["hf"]), depth="50")
  new = pretrained.load_pretrained(_model_variables(), model)
  _assert_trees_equal(
      {c: new[c]["backbone"] for c in ("params", "batch_stats")}, tv_variables)
  # A VGG config goes to the VGG mapping, with its blocks and BatchNorm.
  seen = {}
  monkeypatch.setattr(vgg, "load_into", lambda v, path, backbone: seen.update(
      path=path, blocks=backbone.blocks, batch_norm=backbone.batch_norm))
  model.update(backbone="vgg16", batch_norm=False)
  pretrained.load_pretrained({}, model)
  assert seen == {"path": str(FILES["hf"]), "blocks": vgg.VGG_BLOCKS["16"],
                  "batch_norm": False}


def test_load_into_checks_depth_shapes_and_key():
  with pytest.raises(pretrained.PretrainedMismatchError, match="depth=101"):
    pretrained.load_into(_model_variables(), FILES["torchvision"], depth=101)
  with pytest.raises(pretrained.PretrainedMismatchError) as excinfo:
    pretrained.load_into(_model_variables(width=0.0625), FILES["torchvision"],
                         depth=50)
  first = str(excinfo.value).splitlines()[0]
  assert "wrong shape" in first and "missing" not in first
  assert "conv1.weight file [8, 3, 7, 7] vs model [4, 3, 7, 7]" in str(
      excinfo.value)
  assert "set model.width=0.125" in str(excinfo.value).splitlines()[-1]
  with pytest.raises(ValueError, match="'trunk'"):
    pretrained.load_into(_model_variables(), FILES["torchvision"], depth=50,
                         backbone_key="trunk")


def test_preprocessing_normalizes():
  prep = pretrained.preprocessing_for(FILES["hf"])
  images = np.broadcast_to(np.asarray(prep.mean, np.float32), (2, 4, 4, 3))
  np.testing.assert_allclose(prep.normalize(images), 0.0, atol=1e-7)
  assert prep.as_dict()["std"] == (0.229, 0.224, 0.225)
