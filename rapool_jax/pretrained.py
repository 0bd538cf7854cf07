"""ImageNet ResNet weights from a local file into the Flax backbone (Step 1).

Reads a state dict in one of two key layouts, detected from the keys:

* ``torchvision``: torchvision and timm ResNets (``conv1.weight``,
  ``layer1.0.conv1.weight``, ``layer1.0.downsample.0.weight``, ``fc.weight``);
* ``hf``: Hugging Face transformers ``ResNetForImageClassification`` /
  ``ResNetModel`` (``microsoft/resnet-50``: ``resnet.embedder.embedder.
  convolution.weight``, ``resnet.encoder.stages.0.layers.0.shortcut...``,
  ``...layers.0.layer.2.normalization.running_var``, ``classifier.1.weight``).

from ``.safetensors`` (no torch needed) or ``.pth``/``.pt``/``.bin`` (needs
torch). Conv kernels go OIHW -> HWIO, BatchNorm ``weight/bias`` -> ``params``
``scale/bias`` and ``running_mean/var`` -> ``batch_stats`` ``mean/var``;
``num_batches_tracked`` and the 1000-way classifier are not loaded. Every other
tensor must land on a backbone variable and every backbone variable must be
filled, otherwise :class:`PretrainedMismatchError` lists what did not fit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Any, Mapping

import flax
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

# Not `from rapool_jax.models import resnet`: the package re-exports the
# function `resnet`, which shadows the submodule of the same name.
from rapool_jax.models.resnet import (RESNET_STAGES, ResNet, normalize_depth,
                                      resnet)

__all__ = [
    "IMAGENET",
    "PREPROCESSING",
    "PretrainedMismatchError",
    "Preprocessing",
    "WeightsInfo",
    "inspect_weights",
    "load_backbone",
    "load_classifier",
    "load_into",
    "preprocessing_for",
    "read_state_dict",
]

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"

CONVERT_HINT = (
    "python -c \"import torch, safetensors.torch as st; "
    "st.save_file(torch.load('IN.pth', map_location='cpu'), 'OUT.safetensors')\"")

# Longest list of names per category in an error message; the counts stay exact.
_MAX_LISTED = 40


class MissingTorchError(ImportError, ValueError):
  """A torch weights file, and no torch to read it."""


class PretrainedMismatchError(ValueError):
  """A weights file does not fit the backbone (missing/extra/misshaped tensors)."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """Input normalisation the weights were trained with.

  ``normalize`` takes RGB images scaled to [0, 1] (uint8 / 255), ``[..., 3]``.
  """

  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  color_order: str = "RGB"
  value_range: tuple[float, float] = (0.0, 1.0)

  def normalize(self, images):
    """``[..., 3]`` in [0, 1] -> ``(images - mean) / std``, same shape."""
    mean = jnp.asarray(self.mean, jnp.float32)
    std = jnp.asarray(self.std, jnp.float32)
    return (images - mean) / std

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


IMAGENET = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

# torchvision (V1 and V2 weights), timm's ResNets and microsoft/resnet-50 (its
# preprocessor_config.json) all normalise with the ImageNet statistics.
PREPROCESSING = {"torchvision": IMAGENET, "hf": IMAGENET}


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
  """What a weights file holds, inferred from its keys and shapes."""

  path: str
  layout: str                       # "torchvision" (also timm) or "hf"
  block: str | None                 # "basic" or "bottleneck"
  stage_sizes: tuple[int, ...] | None
  depth: int | str | None           # a key of resnet.RESNET_STAGES, or None
  width: float | None               # stem channels / 64
  num_classes: int | None           # size of the file's classifier, if any
  preprocessing: Preprocessing

  def describe(self) -> str:
    if self.depth is not None:
      name = f"ResNet-{self.depth}"
    elif self.stage_sizes:
      name = f"ResNet with {self.block} blocks {_dashes(self.stage_sizes)}"
    else:
      name = "ResNet of unknown depth"
    return f"{name} (width {_fmt_width(self.width)}, {self.layout} layout)"


# ----------------------------------------------------------------------------
# Reading files.


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The file's tensors by their own key names (``module.`` prefix removed)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"pretrained weights file not found: {path}")
  suffix = os.path.splitext(path)[1].lower()
  if suffix == SAFETENSORS_SUFFIX:
    state = _read_safetensors(path)
  elif suffix in TORCH_SUFFIXES:
    state = _read_torch(path)
  else:
    raise ValueError(
        f"{path}: unsupported weights file type {suffix!r}; expected "
        f"{SAFETENSORS_SUFFIX} or one of {', '.join(TORCH_SUFFIXES)} (torch)")
  # nn.DataParallel / DistributedDataParallel checkpoints prefix every key.
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return state


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  try:
    return dict(safetensors.numpy.load_file(path))
  except TypeError:
    # numpy has no bfloat16, so safetensors.numpy cannot read BF16 tensors.
    return _read_safetensors_raw(path)
  except Exception as e:  # SafetensorError is not importable by a stable name.
    raise ValueError(f"{path}: not a readable safetensors file ({e})") from e


def _read_safetensors_raw(path: str) -> dict[str, np.ndarray]:
  """Header-driven reader (8-byte length, JSON header, data); handles BF16."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  dtypes = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
            "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
            "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
  with open(path, "rb") as f:
    header_len = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(header_len))
    data = f.read()
  out = {}
  for key, meta in header.items():
    if key == "__metadata__":
      continue
    start, end = meta["data_offsets"]
    value = np.frombuffer(data[start:end], dtypes[meta["dtype"]]).reshape(
        meta["shape"])
    out[key] = value.astype(np.float32) if meta["dtype"] == "BF16" else value
  return out


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    # A ValueError: the command line reports it on one line.
    raise MissingTorchError(
        f"{path}: reading .pth/.pt/.bin weights needs PyTorch, which is not "
        f"installed; pip install torch, or convert the file to .safetensors "
        f"once where torch is: {CONVERT_HINT}") from None
  obj = torch.load(path, map_location="cpu", weights_only=True)
  # Training checkpoints wrap the state dict ({"state_dict": ...}, {"model": ...}).
  while isinstance(obj, dict) and not all(
      isinstance(v, torch.Tensor) for v in obj.values()):
    inner = next((obj[k] for k in ("state_dict", "model", "module")
                  if isinstance(obj.get(k), dict)), None)
    if inner is None:
      raise ValueError(
          f"{path}: no tensor state dict found; top-level keys: "
          f"{sorted(map(str, obj))[:20]}")
    obj = inner
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
  out = {}
  for key, value in obj.items():
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
      value = value.float()
    out[key] = value.numpy()
  return out


# ----------------------------------------------------------------------------
# Key layouts. The canonical names are torchvision's.

_HF_PATTERN = re.compile(r"^(resnet\.)?(embedder\.embedder|encoder\.stages)\.")
_TV_PATTERN = re.compile(r"^(conv1|bn1|layer\d+)\.")
_BN_LEAVES = ("weight", "bias", "running_mean", "running_var",
              "num_batches_tracked")


def _detect_layout(keys, path: str) -> tuple[str, str]:
  """-> (layout, prefix of the HF keys: "resnet." or "")."""
  if any(_HF_PATTERN.match(k) for k in keys):
    prefix = "resnet." if any(k.startswith("resnet.") for k in keys) else ""
    return "hf", prefix
  if any(_TV_PATTERN.match(k) for k in keys):
    return "torchvision", ""
  sample = ", ".join(sorted(keys)[:8]) or "(no tensors)"
  raise PretrainedMismatchError(
      f"{path}: not a ResNet state dict in torchvision/timm or Hugging Face "
      f"layout; first keys: {sample}")


def _hf_to_tv(key: str, prefix: str) -> str | None:
  if key.startswith("classifier.1."):
    return "fc." + key[len("classifier.1."):]
  if not key.startswith(prefix):
    return None
  key = key[len(prefix):]
  m = re.fullmatch(r"embedder\.embedder\.(convolution|normalization)\.(\w+)", key)
  if m:
    return ("conv1." if m[1] == "convolution" else "bn1.") + m[2]
  m = re.fullmatch(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)", key)
  if not m:
    return None
  block = f"layer{int(m[1]) + 1}.{m[2]}."
  m2 = re.fullmatch(r"shortcut\.(convolution|normalization)\.(\w+)", m[3])
  if m2:
    return block + ("downsample.0." if m2[1] == "convolution"
                    else "downsample.1.") + m2[2]
  m2 = re.fullmatch(r"layer\.(\d+)\.(convolution|normalization)\.(\w+)", m[3])
  if m2:
    j = int(m2[1]) + 1
    return block + (f"conv{j}." if m2[2] == "convolution" else f"bn{j}.") + m2[3]
  return None


def _tv_to_hf(key: str, prefix: str) -> str:
  if key.startswith("fc."):
    return "classifier.1." + key[3:]
  m = re.fullmatch(r"(conv1|bn1)\.(\w+)", key)
  if m:
    kind = "convolution" if m[1] == "conv1" else "normalization"
    return f"{prefix}embedder.embedder.{kind}.{m[2]}"
  m = re.fullmatch(r"layer(\d+)\.(\d+)\.(conv|bn|downsample\.)(\d)\.(\w+)", key)
  assert m, key
  stage = f"{prefix}encoder.stages.{int(m[1]) - 1}.layers.{m[2]}."
  if m[3] == "downsample.":
    kind = "convolution" if m[4] == "0" else "normalization"
    return f"{stage}shortcut.{kind}.{m[5]}"
  kind = "convolution" if m[3] == "conv" else "normalization"
  return f"{stage}layer.{int(m[4]) - 1}.{kind}.{m[5]}"


def _tv_to_flax(key: str) -> tuple[str, tuple[str, ...], str] | None:
  """``layer1.0.bn2.running_var`` -> ("batch_stats", (layer1_0, bn2, var), "bn")."""
  m = re.fullmatch(r"(conv1|bn1)\.(\w+)", key)
  if m:
    modules, layer, leaf = (m[1],), m[1], m[2]
  else:
    m = re.fullmatch(
        r"layer(\d+)\.(\d+)\.(conv\d+|bn\d+|downsample\.[01])\.(\w+)", key)
    if not m:
      return None
    layer = {"downsample.0": "downsample_conv",
             "downsample.1": "downsample_bn"}.get(m[3], m[3])
    modules, leaf = (f"layer{m[1]}_{m[2]}", layer), m[4]
  if layer.startswith("conv") or layer == "downsample_conv":
    return ("params", modules + ("kernel",), "conv") if leaf == "weight" else None
  target = {"weight": ("params", "scale"), "bias": ("params", "bias"),
            "running_mean": ("batch_stats", "mean"),
            "running_var": ("batch_stats", "var")}.get(leaf)
  if target is None:
    return None
  return target[0], modules + (target[1],), "bn"


def _flax_to_tv(collection: str, path: tuple[str, ...]) -> str:
  *modules, leaf = path
  layer = modules[-1]
  if layer.startswith("conv") or layer == "downsample_conv":
    name = "weight"
  else:
    name = {("params", "scale"): "weight", ("params", "bias"): "bias",
            ("batch_stats", "mean"): "running_mean",
            ("batch_stats", "var"): "running_var"}.get((collection, leaf), leaf)
  layer = {"downsample_conv": "downsample.0",
           "downsample_bn": "downsample.1"}.get(layer, layer)
  if len(modules) == 1:
    return f"{layer}.{name}"
  stage, index = modules[0][len("layer"):].split("_")
  return f"layer{stage}.{index}.{layer}.{name}"


@dataclasses.dataclass
class _Weights:
  """A file's tensors under torchvision names, remembering the file's names."""

  path: str
  layout: str
  prefix: str
  tensors: dict[str, tuple[str, np.ndarray]]   # tv name -> (file key, array)
  unknown: dict[str, np.ndarray]               # file keys with no mapping

  def file_key(self, tv_key: str) -> str:
    if self.layout == "hf":
      return _tv_to_hf(tv_key, self.prefix)
    return tv_key


def _load(path) -> _Weights:
  path = os.fspath(path)
  state = read_state_dict(path)
  layout, prefix = _detect_layout(list(state), path)
  tensors, unknown = {}, {}
  for key, value in state.items():
    tv_key = _hf_to_tv(key, prefix) if layout == "hf" else key
    if tv_key is None or (_tv_to_flax(tv_key) is None and
                          not tv_key.startswith("fc.") and
                          not tv_key.endswith(".num_batches_tracked")):
      unknown[key] = value
    else:
      tensors[tv_key] = (key, value)
  if layout == "hf":
    _check_hf_config(path)
  return _Weights(path, layout, prefix, tensors, unknown)


def _check_hf_config(path: str) -> None:
  """Rejects HF ResNet variants whose difference the weights cannot show."""
  config_path = os.path.join(os.path.dirname(path), "config.json")
  if not os.path.isfile(config_path):
    return
  with open(config_path) as f:
    config = json.load(f)
  if config.get("model_type") != "resnet":
    return
  problems = []
  if config.get("downsample_in_bottleneck"):
    problems.append("downsample_in_bottleneck=true (stride on the 1x1 conv, "
                    "ResNet v1; the backbone is v1.5: stride on the 3x3)")
  if config.get("downsample_in_first_stage"):
    problems.append("downsample_in_first_stage=true (stride 2 in stage 1)")
  if config.get("hidden_act", "relu") != "relu":
    problems.append(f"hidden_act={config['hidden_act']!r} (backbone uses relu)")
  if problems:
    raise PretrainedMismatchError(
        f"{path}: its {config_path} describes a ResNet the backbone does not "
        f"implement: {'; '.join(problems)}")


def _infer(weights: _Weights) -> WeightsInfo:
  stages: dict[int, int] = {}
  bottleneck = False
  for tv_key in weights.tensors:
    m = re.match(r"layer(\d+)\.(\d+)\.(\w+)", tv_key)
    if m:
      stage, index = int(m[1]), int(m[2])
      stages[stage] = max(stages.get(stage, 0), index + 1)
      bottleneck |= m[3] == "conv3"
  block = "bottleneck" if bottleneck else "basic"
  stage_sizes = (tuple(stages[s] for s in sorted(stages))
                 if sorted(stages) == list(range(1, len(stages) + 1)) and stages
                 else None)
  depth = None
  for name, (kind, sizes) in RESNET_STAGES.items():
    if kind == block and tuple(sizes) == stage_sizes:
      depth = name
  stem = weights.tensors.get("conv1.weight")
  width = stem[1].shape[0] / 64 if stem is not None else None
  fc = weights.tensors.get("fc.weight")
  num_classes = int(fc[1].shape[0]) if fc is not None else None
  return WeightsInfo(
      path=weights.path, layout=weights.layout,
      block=block if stage_sizes else None, stage_sizes=stage_sizes,
      depth=depth, width=width, num_classes=num_classes,
      preprocessing=PREPROCESSING[weights.layout])


def inspect_weights(path: str | os.PathLike) -> WeightsInfo:
  """Layout, depth, width and preprocessing of a weights file."""
  return _infer(_load(path))


def preprocessing_for(path: str | os.PathLike) -> Preprocessing:
  """The input normalisation that goes with the weights in ``path``."""
  return inspect_weights(path).preprocessing


# ----------------------------------------------------------------------------
# Matching against the backbone's variables.


def _check_depth(info: WeightsInfo, depth) -> None:
  block, sizes = RESNET_STAGES[depth]
  if info.stage_sizes is None or (info.block, info.stage_sizes) == (
      block, tuple(sizes)):
    return  # Unknown structure: the per-tensor check reports what is wrong.
  fix = (f"set model.depth={info.depth}" if info.depth is not None
         else "no ResNet depth has this structure")
  raise PretrainedMismatchError(
      f"{info.path} holds a {info.describe()} ({info.block} blocks "
      f"{_dashes(info.stage_sizes)}) but depth={depth!r} was requested "
      f"({block} blocks {_dashes(sizes)}); {fix}, or use a ResNet-{depth} file")


def _fill(weights: _Weights, target: Mapping[str, Any], what: str
          ) -> dict[tuple[str, ...], np.ndarray]:
  """Matches the file against ``target`` ({"params", "batch_stats"} trees).

  Returns flat ``(collection, *path) -> array`` (target dtype) for every target
  leaf outside a ``fc`` head, or raises PretrainedMismatchError.
  """
  flat_target = {}
  for collection in ("params", "batch_stats"):
    tree = flax.core.unfreeze(target.get(collection, {}))
    for path, leaf in traverse_util.flatten_dict(tree).items():
      if path[0] != "fc":  # A classifier head of the target is never loaded.
        flat_target[(collection,) + path] = leaf
  filled, seen, unexpected, wrong = {}, set(), [], []
  for tv_key, (file_key, value) in sorted(weights.tensors.items()):
    if tv_key.startswith("fc.") or tv_key.endswith(".num_batches_tracked"):
      continue
    collection, path, kind = _tv_to_flax(tv_key)
    leaf = flat_target.get((collection,) + path)
    if leaf is None:
      unexpected.append(f"{file_key} {_shape(value.shape)}")
      continue
    seen.add((collection,) + path)
    expected = tuple(leaf.shape)
    if kind == "conv":
      # Report both shapes in the file's OIHW order.
      expected = (expected[3], expected[2], expected[0], expected[1]) if len(
          expected) == 4 else expected
    if tuple(value.shape) != expected:
      wrong.append(f"{file_key} file {_shape(value.shape)} vs model "
                   f"{_shape(expected)}")
      continue
    if kind == "conv":
      value = np.transpose(value, (2, 3, 1, 0))
    filled[(collection,) + path] = np.ascontiguousarray(value, leaf.dtype)
  unexpected += [f"{k} {_shape(v.shape)}" for k, v in sorted(
      weights.unknown.items())]
  missing = [
      f"{weights.file_key(_flax_to_tv(k[0], k[1:]))} {_shape(_file_shape(v))}"
      for k, v in flat_target.items() if k not in seen]
  if missing or unexpected or wrong:
    counts = ", ".join(f"{len(items)} {name}" for name, items in (
        ("missing", missing), ("unexpected", unexpected),
        ("wrong shape", wrong)) if items)
    lines = [f"{weights.path} ({weights.layout} layout) does not fit {what}: "
             f"{counts}"]
    for name, items in (("missing", missing), ("unexpected", unexpected),
                        ("wrong shape", wrong)):
      if items:
        more = (f", ... (+{len(items) - _MAX_LISTED} more)"
                if len(items) > _MAX_LISTED else "")
        lines.append(f"  {name}: {', '.join(items[:_MAX_LISTED])}{more}")
    stem = flat_target.get(("params", "conv1", "kernel"))
    hint = _hint(weights, stem.shape[-1] if stem is not None else None)
    if hint:
      lines.append(f"  hint: {hint}")
    raise PretrainedMismatchError("\n".join(lines))
  return filled


def _hint(weights: _Weights, target_stem: int | None) -> str | None:
  """A likely cause for a mismatch, or None."""
  keys = set(weights.unknown) | {k for k, _ in weights.tensors.values()}
  if any(k.startswith("conv1.0.") for k in keys):
    return ("a deep-stem ResNet (timm resnet*c/d, 'conv1.0/1/3'); only the "
            "torchvision 7x7-stem ResNet is supported")
  if any(re.match(r"layer\d+\.\d+\.downsample\.2\.", k) for k in keys):
    return "an avg-pool shortcut ResNet (timm resnet*d); not supported"
  stem = weights.tensors.get("conv1.weight")
  first = weights.tensors.get("layer1.0.conv1.weight")
  if stem is not None and first is not None and (
      first[1].shape[0] != stem[1].shape[0]):
    return ("bottleneck width differs from the stem width (wide ResNet or "
            "ResNeXt); only plain ResNets are supported")
  if stem is not None and target_stem is not None and (
      stem[1].shape[0] != target_stem):
    return (f"the file has width {stem[1].shape[0] / 64:g} (stem "
            f"{stem[1].shape[0]} channels), the model {target_stem / 64:g}; "
            f"set model.width={stem[1].shape[0] / 64:g}")
  return None


def _file_shape(leaf) -> tuple[int, ...]:
  """A target leaf's shape in the file's layout (HWIO -> OIHW)."""
  shape = tuple(leaf.shape)
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return shape


def _shape(shape) -> str:
  return "[" + ", ".join(map(str, shape)) + "]"


def _dashes(sizes) -> str:
  return "-".join(map(str, sizes))


def _fmt_width(width) -> str:
  return "unknown" if width is None else f"{width:g}"


@functools.lru_cache(maxsize=8)
def _abstract_variables(depth, width: float):
  """Shapes/dtypes of the backbone variables; independent of stride/dropout."""
  module = resnet(depth, width=width)
  return jax.eval_shape(
      lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                          train=False))


# ----------------------------------------------------------------------------
# Public loaders.


def load_backbone(path: str | os.PathLike, depth: int | str | None = 50,
                  **resnet_kwargs) -> tuple[ResNet, dict[str, Any]]:
  """Backbone module and its variables from an ImageNet weights file.

  Args:
    path: ``.safetensors`` (torchvision/timm or HF names) or ``.pth``/``.pt``/
      ``.bin`` (needs torch).
    depth: 18, 34, 50, 101 or 152; None takes the file's.
    **resnet_kwargs: passed to ``resnet()`` (``output_stride``,
      ``dropout_rate``, ``dtype``; ``width`` defaults to the file's).

  Returns:
    ``(module, variables)``: ``module.apply(variables, images, train=False)``
    maps normalised ``[B, H, W, 3]`` float32 images (see ``preprocessing_for``)
    to the last feature map ``[B, h, w, C]``.
  """
  if resnet_kwargs.get("num_classes") is not None:
    raise ValueError("load_backbone builds a feature extractor (num_classes="
                     "None); the new head belongs to the model using it")
  weights = _load(path)
  info = _infer(weights)
  if depth is None:
    if info.depth is None:
      raise PretrainedMismatchError(
          f"{info.path}: cannot infer the ResNet depth ({info.describe()}); "
          f"pass depth explicitly")
    depth = info.depth
  depth = normalize_depth(depth)
  _check_depth(info, depth)
  width = resnet_kwargs.pop("width", None)
  if width is None:
    width = info.width if info.width is not None else 1.0
  elif info.width is not None and _stem(width) != _stem(info.width):
    raise PretrainedMismatchError(
        f"{info.path} has width {_fmt_width(info.width)} (stem "
        f"{_stem(info.width)} channels) but width={width:g} was requested "
        f"(stem {_stem(width)}); leave width unset to take the file's")
  module = resnet(depth, width=width, **resnet_kwargs)
  target = _abstract_variables(depth, float(width))
  filled = _fill(weights, target, f"ResNet-{depth} (width {width:g})")
  variables = {}
  for flat_key, value in filled.items():
    variables[flat_key] = jnp.asarray(value)
  return module, traverse_util.unflatten_dict(variables)


def load_into(variables: Mapping[str, Any], path: str | os.PathLike,
              depth: int | str, backbone_key: str = "backbone"
              ) -> dict[str, Any]:
  """Replaces ``variables[*][backbone_key]`` with the file's weights.

  Args:
    variables: a full model's ``{"params": ..., "batch_stats": ...}``; its
      backbone subtree gives the expected shapes (and dtypes/shardings).
    path: weights file, as in ``load_backbone``.
    depth: the model's ResNet depth (``config.model.depth``).
    backbone_key: name of the backbone submodule.

  Returns:
    A new variables tree; everything outside the backbone (the new heads,
    other collections) is the same object as before.
  """
  frozen = isinstance(variables, flax.core.FrozenDict)
  new = dict(flax.core.unfreeze(variables) if frozen else variables)
  params = new.get("params", {})
  if backbone_key not in params:
    raise ValueError(
        f"load_into: no {backbone_key!r} in variables['params'] (has "
        f"{sorted(params)}); pass backbone_key=")
  target = {"params": params[backbone_key]}
  if backbone_key in new.get("batch_stats", {}):
    target["batch_stats"] = new["batch_stats"][backbone_key]
  depth = normalize_depth(depth)
  weights = _load(path)
  _check_depth(_infer(weights), depth)
  filled = _fill(weights, target, f"the model's ResNet-{depth} backbone "
                 f"(variables[*][{backbone_key!r}])")
  for collection, subtree in target.items():
    flat = traverse_util.flatten_dict(flax.core.unfreeze(subtree))
    for path_, old in flat.items():
      value = filled.get((collection,) + path_)
      if value is not None:
        flat[path_] = _like(value, old)
    new[collection] = {**new[collection],
                       backbone_key: traverse_util.unflatten_dict(flat)}
  return flax.core.freeze(new) if frozen else new


def load_pretrained(variables: Mapping[str, Any], model_config) -> dict:
  """Step 1 for every backbone: ``model_config.pretrained`` into the
  network's ``backbone`` variables, the heads kept (ResNet: torchvision, timm
  or Hugging Face files, ``load_into``; VGG: torchvision, ``vgg.load_into``)."""
  name = model_config.get("backbone", "resnet")
  if name == "resnet":
    return load_into(variables, model_config.pretrained, model_config.depth)
  from rapool_jax.models import vgg  # pylint: disable=g-import-not-at-top
  backbone = vgg.vgg(name, batch_norm=model_config.get("batch_norm", True))
  return vgg.load_into(variables, model_config.pretrained, backbone)


def load_classifier(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
  """The file's ImageNet classifier as ``{"kernel": [C, K], "bias": [K]}``."""
  weights = _load(path)
  if "fc.weight" not in weights.tensors:
    return None
  out = {"kernel": np.asarray(weights.tensors["fc.weight"][1], np.float32).T}
  if "fc.bias" in weights.tensors:
    out["bias"] = np.asarray(weights.tensors["fc.bias"][1], np.float32)
  return out


def _stem(width: float) -> int:
  return max(1, int(round(64 * width)))  # as ResNet._stage_width(0)


def _like(value: np.ndarray, old):
  """``value`` placed like ``old`` (a sharded jax.Array keeps its sharding)."""
  sharding = getattr(old, "sharding", None)
  if isinstance(old, jax.Array) or sharding is not None:
    return jax.device_put(value, sharding)
  return jnp.asarray(value)
