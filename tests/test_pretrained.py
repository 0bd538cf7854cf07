"""ImageNet weights: parity with transformers, key layouts, file formats, errors.

The fixture (``scripts/make_resnet_parity_fixture.py``) is a random-init HF
``ResNetForImageClassification`` shaped as torchvision's ResNet-50 at width 1/8,
saved under HF and under torchvision key names, with its outputs.
"""

import functools
import importlib.machinery
import json
import pathlib
import re
import sys
import types

import flax
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from rapool_jax import config_lib
from rapool_jax import errors
from rapool_jax import pretrained
from rapool_jax import weight_files
from rapool_jax.models import rapool_net
from rapool_jax.models.resnet import load as load_resnet
from rapool_jax.models.resnet import resnet, stem_width

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


def _load_backbone(path, depth=50, **resnet_kwargs):
  """A ResNet trunk and its variables from a weights file (the file's width
  unless given), as in a notebook."""
  path = str(path)
  tensors = weight_files.read(path)
  resnet_kwargs.setdefault("width", stem_width(tensors, path) or 1.0)
  module = resnet(depth, **resnet_kwargs)
  shapes = jax.eval_shape(lambda: module.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  return module, load_resnet(shapes, tensors, path)


@pytest.fixture(scope="module")
def tv_variables():
  return _load_backbone(FILES["torchvision"])[1]


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
def test_width_and_preprocessing_come_from_the_file(layout):
  assert stem_width(_state(layout)) == WIDTH
  prep = pretrained.preprocessing_for(FILES[layout])
  assert prep == pretrained.IMAGENET == {"mean": (0.485, 0.456, 0.406),
                                         "std": (0.229, 0.224, 0.225)}


@pytest.mark.parametrize("layout", ["hf", "torchvision"])
def test_matches_transformers_reference(layout, reference):
  module, variables = _load_backbone(FILES[layout], depth=50)
  assert module.width == WIDTH
  with jax.default_matmul_precision("highest"):
    features = jax.jit(functools.partial(module.apply, train=False))(
        variables, jnp.asarray(reference["images"], jnp.float32))
  assert features.shape == reference["features"].shape == (2, 3, 3, 256)
  err = _rel_err(features, reference["features"])
  print(f"{layout}: feature map max rel err {err:.2e}")
  # float32 throughout: 4.8e-7 measured (README); a wrong weight mapping or
  # padding is off by 1e-2 or more, summation order by a few 1e-7.
  assert err < 1e-6
  # The classifier is not loaded; applied here, it checks the fixture's logits.
  fc = {"hf": "classifier.1.", "torchvision": "fc."}[layout]
  state = _state(layout)
  logits = (np.asarray(features).mean(axis=(1, 2))
            @ state[fc + "weight"].astype(np.float32).T + state[fc + "bias"])
  err = _rel_err(logits, reference["logits"])
  print(f"{layout}: logits max rel err {err:.2e}")
  assert err < 1e-6


def test_layouts_give_identical_variables(tv_variables):
  _, hf_variables = _load_backbone(FILES["hf"])
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
    _assert_trees_equal(_load_backbone(path)[1], tv_variables)


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
  _, variables = _load_backbone(path)
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
  with pytest.raises(weight_files.MismatchError) as excinfo:
    _load_backbone(path)
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
  with pytest.raises(weight_files.MismatchError) as excinfo:
    _load_backbone(_save(tmp_path, state))
  lines = str(excinfo.value).splitlines()
  assert "2 missing, 1 unexpected, 1 wrong shape" in lines[0]
  assert lines[1] == "  missing: bn1.bias [8], layer3.1.conv1.weight [32, 128, 1, 1]"
  assert lines[2] == "  unexpected: foo.bar [2]"
  assert lines[3] == ("  wrong shape: layer1.0.downsample.1.running_mean file "
                      "[31] vs model [32]")


def test_foreign_files_are_rejected(tmp_path):
  path = _save(tmp_path, {"features.0.weight": np.zeros((4, 3, 3, 3))})
  with pytest.raises(weight_files.MismatchError, match="not a ResNet"):
    _load_backbone(path)
  # timm's deep-stem variants share the torchvision names but not the stem.
  state = _state("torchvision")
  state["conv1.0.weight"] = state.pop("conv1.weight")
  with pytest.raises(weight_files.MismatchError, match="deep-stem"):
    _load_backbone(_save(tmp_path, state))


def test_unusable_paths_get_the_checks_lines(tmp_path, monkeypatch):
  """``check_readable``'s lines, which ``checks.py`` reports before training."""
  npz, absent = tmp_path / "weights.npz", tmp_path / "absent.safetensors"
  npz.write_bytes(b"x")
  pth = tmp_path / "resnet50.pth"
  pth.write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails.
  for path, line in (
      (absent, f"config.model.pretrained={str(absent)!r}: no such file"),
      (npz, f"config.model.pretrained={str(npz)!r}: unsupported file type "
            "'.npz'; expected one of ('.safetensors', '.pth', '.pt', '.bin')"),
      (pth, f"{pth}: reading .pth weights needs PyTorch, which is not "
            "installed: pip install torch (CPU wheels: pip install torch "
            "--index-url https://download.pytorch.org/whl/cpu)")):
    with pytest.raises(errors.UserError) as excinfo:
      weight_files.check_readable(str(path))
    assert str(excinfo.value) == line
    with pytest.raises(errors.UserError, match=f"^{re.escape(line)}$"):
      _load_backbone(path)  # Every reader checks first.


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_safetensors_is_one_line(tmp_path, damage):
  blob = FILES["torchvision"].read_bytes()
  path = tmp_path / "resnet50.safetensors"
  path.write_bytes(b"\x00garbage" * 9 if damage == "garbage" else blob[:-100])
  with pytest.raises(errors.UserError) as excinfo:
    weight_files.read(path)
  message = str(excinfo.value)
  print(message)
  assert message.startswith(f"{path}: not a readable .safetensors file (")
  assert "\n" not in message


def _fake_torch(load):
  """A stand-in ``torch`` module: found by ``importlib``, ``torch.load=load``."""
  torch = types.ModuleType("torch")
  torch.__spec__ = importlib.machinery.ModuleSpec("torch", None)
  torch.Tensor = type("Tensor", (), {})
  torch.load = load
  return torch


def test_unreadable_pth_is_one_line(tmp_path, monkeypatch):
  def load(path, **kwargs):
    assert kwargs == {"map_location": "cpu", "weights_only": True}
    # What torch 2.x says for a file torch.save did not write.
    raise RuntimeError(
        "Weights only load failed. This file can still be loaded, to do so you"
        " have two options, do those steps only if you trust the source of the"
        " checkpoint.\n\t(1) In PyTorch 2.6, we changed the default value ...\n"
        "\t(2) Alternatively, ...\n WeightsUnpickler error: Unsupported "
        "operand 160\n\nCheck the documentation of torch.load to learn more.")
  monkeypatch.setitem(sys.modules, "torch", _fake_torch(load))
  for suffix in (".pth", ".pt", ".bin"):
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(b"\xa0 not a torch file")
    with pytest.raises(errors.UserError) as excinfo:
      weight_files.read(path)
    assert str(excinfo.value) == (
        f"{path}: not a readable PyTorch state dict (a torch.save of tensors, "
        "read with torch.load(weights_only=True)): RuntimeError")


def test_pth_that_is_no_state_dict_is_one_line(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", _fake_torch(
      lambda path, **kwargs: {"epoch": 3, "optimizer": [1, 2]}))
  path = tmp_path / "checkpoint.pt"
  path.write_bytes(b"read by the fake")
  with pytest.raises(errors.UserError, match=r"holds no PyTorch state dict"):
    weight_files.read(path)


@pytest.mark.parametrize("depth", [18, 101])
def test_depth_mismatch(depth):
  with pytest.raises(weight_files.MismatchError) as excinfo:
    _load_backbone(FILES["torchvision"], depth=depth)
  message = str(excinfo.value)
  print(message)
  first = message.splitlines()[0]
  assert first.startswith(f"{FILES['torchvision']} does not fit a ResNet-{depth} (")
  assert first.endswith("; hint: the file holds a ResNet-50 (bottleneck blocks "
                        "3-4-6-3); set model.depth=50")
  with pytest.raises(errors.UserError, match="not a ResNet depth"):
    _load_backbone(FILES["torchvision"], depth=42)


def test_width_defaults_to_the_files(tv_variables):
  module, variables = _load_backbone(
      FILES["torchvision"], output_stride=16, dropout_rate=0.1)
  assert (module.stage_sizes, module.width, module.output_stride) == (
      (3, 4, 6, 3), WIDTH, 16)
  _assert_trees_equal(variables, tv_variables)
  with pytest.raises(weight_files.MismatchError, match="set model.width=0.125"):
    _load_backbone(FILES["torchvision"], width=1.0)


def test_hf_config_with_v1_stride_is_rejected(tmp_path):
  path = _save(tmp_path, _state("hf"))
  (tmp_path / "config.json").write_text(json.dumps(
      {"model_type": "resnet", "downsample_in_bottleneck": True}))
  with pytest.raises(weight_files.MismatchError, match="v1.5"):
    _load_backbone(path)


def _torch():
  return pytest.importorskip(
      "torch", reason="torch not installed: real .pth reading not exercised")


def test_pth_with_torch(tmp_path, tv_variables):
  torch = _torch()
  tensors = {k: torch.from_numpy(v.copy())
             for k, v in _state("torchvision").items()}
  plain = tmp_path / "plain.pth"
  torch.save(tensors, plain)
  # A DataParallel training checkpoint: wrapped and "module."-prefixed.
  wrapped = tmp_path / "checkpoint.pt"
  torch.save({"epoch": 3, "state_dict": {f"module.{k}": v
                                         for k, v in tensors.items()}}, wrapped)
  bf16 = tmp_path / "pytorch_model.bin"
  torch.save({k: v.to(torch.bfloat16) if v.is_floating_point() else v
              for k, v in tensors.items()}, bf16)
  for path in (plain, wrapped, bf16):
    _, variables = _load_backbone(path)
    if path == bf16:
      variables = jax.tree.map(lambda x: np.asarray(x).astype(
          ml_dtypes.bfloat16).astype(np.float32), variables)
      tv = jax.tree.map(lambda x: np.asarray(x).astype(
          ml_dtypes.bfloat16).astype(np.float32), tv_variables)
      _assert_trees_equal(variables, tv)
    else:
      _assert_trees_equal(variables, tv_variables)


@pytest.mark.parametrize("content", ["garbage", "truncated", "pickle"])
def test_corrupt_pth_with_torch_is_one_line(tmp_path, content):
  torch = _torch()
  good = tmp_path / "good.pth"
  torch.save({"conv1.weight": torch.zeros(2, 3, 7, 7)}, good)
  path = tmp_path / "resnet50.pth"
  if content == "garbage":
    path.write_bytes(bytes(range(160, 256)) * 20)  # "Unsupported operand 160"
  elif content == "truncated":
    path.write_bytes(good.read_bytes()[:-200])
  else:  # Not weights: a pickled function, which weights_only refuses.
    torch.save({"fn": print}, path, _use_new_zipfile_serialization=True)
  with pytest.raises(errors.UserError) as excinfo:
    _load_backbone(path)
  message = str(excinfo.value)
  print(message)
  assert message.startswith(f"{path}: not a readable PyTorch state dict")
  assert "\n" not in message


def _model_config(**overrides):
  model = config_lib.base_config().model
  model.update(**overrides)
  return model


def _network_variables(model):
  """A whole network's variables (backbone and heads), all zeros."""
  shapes = jax.eval_shape(lambda: rapool_net.build_model(model).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  return {c: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                         shapes.get(c, {})) for c in ("params", "batch_stats")}


def _assert_heads_kept(new, variables):
  for name, head in variables["params"].items():
    if name != "backbone":
      assert new["params"][name] is head


def test_one_loader_serves_every_backbone(tmp_path, tv_variables):
  """``load_pretrained`` with a ResNet (HF file) and a VGG-11-BN config,
  each loading a real file into the network's backbone, heads kept."""
  model = _model_config(pretrained=str(FILES["hf"]), depth="50", width=WIDTH)
  variables = _network_variables(model)
  new = pretrained.load_pretrained(variables, model)
  _assert_trees_equal(
      {c: new[c]["backbone"] for c in ("params", "batch_stats")}, tv_variables)
  _assert_heads_kept(new, variables)
  # torchvision's vgg11_bn().features: conv, bn, relu per conv, a pool per block.
  convs = (0, 4, 8, 11, 15, 18, 22, 25)
  names = ("1_1", "2_1", "3_1", "3_2", "4_1", "4_2", "5_1", "5_2")
  model = _model_config(backbone="vgg11", batch_norm=True, width=1 / 16)
  variables = _network_variables(model)
  backbone = {c: variables[c]["backbone"] for c in ("params", "batch_stats")}
  rng = np.random.default_rng(0)
  state = {"classifier.0.weight": np.zeros((3, 4), np.float32)}
  for i, name in zip(convs, names):
    kernel = backbone["params"][f"conv{name}"]["kernel"]
    state[f"features.{i}.weight"] = rng.normal(
        size=kernel.shape[::-1]).transpose(0, 1, 3, 2)  # HWIO -> OIHW
    for leaf in ("bias", "weight", "running_mean", "running_var"):
      prefix = i if leaf == "bias" else i + 1
      state[f"features.{prefix}.{leaf}"] = rng.uniform(0.5, 1.5, kernel.shape[3])
    state[f"features.{i + 1}.bias"] = rng.normal(size=kernel.shape[3])
    state[f"features.{i + 1}.num_batches_tracked"] = np.array(7)
  model.pretrained = str(_save(tmp_path, state, "vgg11_bn.safetensors"))
  new = pretrained.load_pretrained(variables, model)
  _assert_heads_kept(new, variables)
  for i, name in zip(convs, names):
    params = new["params"]["backbone"]
    np.testing.assert_allclose(
        params[f"conv{name}"]["kernel"],
        state[f"features.{i}.weight"].transpose(2, 3, 1, 0), rtol=1e-6)
    np.testing.assert_allclose(params[f"conv{name}"]["bias"],
                               state[f"features.{i}.bias"], rtol=1e-6)
    np.testing.assert_allclose(params[f"bn{name}"]["scale"],
                               state[f"features.{i + 1}.weight"], rtol=1e-6)
    np.testing.assert_allclose(
        new["batch_stats"]["backbone"][f"bn{name}"]["var"],
        state[f"features.{i + 1}.running_var"], rtol=1e-6)


def test_load_pretrained_names_what_does_not_fit():
  model = _model_config(pretrained=str(FILES["torchvision"]), depth="50",
                        width=WIDTH / 2)
  with pytest.raises(weight_files.MismatchError) as excinfo:
    pretrained.load_pretrained(_network_variables(model), model)
  lines = str(excinfo.value).splitlines()
  assert "wrong shape" in lines[0] and "missing" not in lines[0]
  assert lines[0].endswith("; hint: the file has width 0.125 (stem 8 "
                           "channels), the model 0.0625; set model.width=0.125")
  assert "conv1.weight file [8, 3, 7, 7] vs model [4, 3, 7, 7]" in lines[1]
  model.update(depth="18", width=WIDTH)
  with pytest.raises(weight_files.MismatchError, match="set model.depth=50"):
    pretrained.load_pretrained(_network_variables(model), model)
