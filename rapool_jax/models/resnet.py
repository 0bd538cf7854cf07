"""ResNet v1.5 (torchvision topology) in Flax Linen, NHWC.

Layout, padding and module names follow torchvision (``conv1``, ``bn1``,
``layer1_0/conv1``, ``layer1_0/downsample_conv``, ...), so torchvision weights
reproduce torchvision outputs and ``load``, their mapping below, is a rename.
As in flax's ``examples/imagenet``, the layers (norm, activation, dropout,
pool) are modules that ``rapool_net.build_model`` may swap.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any, Callable, Mapping, Sequence

from flax import traverse_util
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from rapool_jax import errors
from rapool_jax import weight_files

ModuleDef = Any

# torch BatchNorm2d(momentum=0.1) updates running = 0.9 * running + 0.1 * batch.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# depth -> (block kind, blocks per stage). "tiny" is a test-only variant.
RESNET_STAGES = {
    "tiny": ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _pad(size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  return ((size, size), (size, size))


class _Block(nn.Module):
  """A residual block's settings and its shortcut."""

  features: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: int = 1
  dilation: int = 1
  first_dilation: int = 1
  downsample: bool = False

  expansion = 1

  def shortcut(self, x):
    """``x``, or its 1x1 projection to the block's stride and width."""
    if not self.downsample:
      return x
    x = self.conv(self.features * self.expansion, (1, 1),
                  (self.strides, self.strides), padding="VALID",
                  name="downsample_conv")(x)
    return self.norm(name="downsample_bn")(x)


class BasicBlock(_Block):
  """Two 3x3 convs (ResNet-18/34). ``[B, H, W, C]`` -> ``[B, H/s, W/s, F]``."""

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.features, (3, 3), (self.strides, self.strides),
                  padding=_pad(self.first_dilation),
                  kernel_dilation=self.first_dilation, name="conv1")(x)
    y = self.act(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), padding=_pad(self.dilation),
                  kernel_dilation=self.dilation, name="conv2")(y)
    y = self.norm(name="bn2")(y)
    return self.act(y + self.shortcut(x))


class BottleneckBlock(_Block):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 x4 (ResNet-50/101/152).
  ``[B, H, W, C]`` -> ``[B, H/s, W/s, 4F]``."""

  expansion = 4

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.features, (1, 1), padding="VALID", name="conv1")(x)
    y = self.act(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), (self.strides, self.strides),
                  padding=_pad(self.first_dilation),
                  kernel_dilation=self.first_dilation, name="conv2")(y)
    y = self.act(self.norm(name="bn2")(y))
    y = self.conv(self.features * 4, (1, 1), padding="VALID", name="conv3")(y)
    y = self.norm(name="bn3")(y)
    return self.act(y + self.shortcut(x))


class ResNet(nn.Module):
  """ResNet v1.5 trunk: ``[B, H, W, 3]`` -> ``[B, H/os, W/os, C]``.

  Attributes:
    stage_sizes: blocks per stage.
    block: "basic" or "bottleneck".
    width: width multiplier on the base widths (64, 128, 256, 512).
    output_stride: 32 (paper), 16 or 8; reached by dilating the last stage(s)
      as torchvision's ``replace_stride_with_dilation`` does.
    dropout_rate: dropout after each of the four stages (the paper's regulariser).
    dtype: compute dtype; parameters stay float32.
    norm, act, dropout, pool: the layers (flax's BatchNorm, ReLU, Dropout and
      max pool by default); ``norm`` is called with flax BatchNorm's keywords,
      ``dropout(rate, deterministic=)``, ``pool(x, window, strides, padding)``.
  """

  stage_sizes: Sequence[int]
  block: str = "bottleneck"
  width: float = 1.0
  output_stride: int = 32
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  norm: ModuleDef = nn.BatchNorm
  act: Callable = nn.relu
  dropout: ModuleDef = nn.Dropout
  pool: Callable = nn.max_pool

  @nn.compact
  def __call__(self, x, train: bool = False, bn_train: bool | None = None):
    """``train`` enables dropout and, unless ``bn_train`` says otherwise,
    batch statistics in BatchNorm (``bn_train=False``: frozen statistics)."""
    bn_train = train if bn_train is None else bn_train
    if self.output_stride not in (8, 16, 32):
      raise errors.UserError(
          f"model.output_stride must be 8, 16 or 32, got {self.output_stride}")
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(self.norm, use_running_average=not bn_train,
                             momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                             dtype=self.dtype)
    block_cls = {"basic": BasicBlock, "bottleneck": BottleneckBlock}[self.block]
    base = max(1, int(round(64 * self.width)))
    x = x.astype(self.dtype)
    x = conv(base, (7, 7), (2, 2), padding=_pad(3), name="conv1")(x)
    x = self.act(norm(name="bn1")(x))
    x = self.pool(x, (3, 3), strides=(2, 2), padding=_pad(1))

    # Stages from this one on trade their stride for dilation.
    first_dilated = {32: 4, 16: 3, 8: 2}[self.output_stride]
    dilation = 1
    for stage, num_blocks in enumerate(self.stage_sizes):
      strides = 1 if stage == 0 else 2
      previous_dilation = dilation
      if stage >= first_dilated:
        dilation *= strides
        strides = 1
      for i in range(num_blocks):
        x = block_cls(
            features=base * 2**stage, conv=conv, norm=norm, act=self.act,
            strides=strides if i == 0 else 1,
            dilation=dilation,
            first_dilation=previous_dilation if i == 0 else dilation,
            # A stage's first block changes the width: projection shortcut
            # (in stage 1 only the bottleneck's, which widens by 4).
            downsample=i == 0 and (stage > 0 or block_cls.expansion > 1),
            name=f"layer{stage + 1}_{i}")(x)
      x = self.dropout(rate=self.dropout_rate, deterministic=not train,
                       name=f"dropout{stage + 1}")(x)
    return x


def normalize_depth(depth: int | str) -> int | str:
  """``"50"`` -> ``50``; raises ValueError naming ``model.depth`` if unknown."""
  if isinstance(depth, str) and depth.isdigit():
    depth = int(depth)
  if depth not in RESNET_STAGES:
    raise errors.UserError(
        f"model.depth={depth!r} is not a ResNet depth; choose one of "
        f"{sorted(map(str, RESNET_STAGES))}")
  return depth


def resnet(depth: int | str, **kwargs) -> ResNet:
  """Builds ResNet-``depth`` (18, 34, 50, 101, 152 or "tiny")."""
  block, stages = RESNET_STAGES[normalize_depth(depth)]
  return ResNet(stage_sizes=stages, block=block, **kwargs)


# ----------------------------------------------------------------------------
# ImageNet weights (Step 1): torchvision/timm or Hugging Face state dicts.

_HF_KEY = re.compile(r"^(resnet\.)?(embedder\.embedder|encoder\.stages)\.")
_TV_KEY = re.compile(r"^(conv1|bn1|layer\d+)\.")
# Stage and block of a key in any of the namings (torchvision, HF, Flax).
_BLOCK_KEY = re.compile(r"(?:layer|stages\.)(\d+)[._](?:layers\.)?(\d+)")
# The ImageNet classifier and BatchNorm's batch counters are not loaded.
_IGNORED = r"^(fc|classifier)\.|num_batches_tracked$"


def _torchvision_module(modules: tuple[str, ...]) -> str:
  """``("layer1_0", "downsample_bn")`` -> ``"layer1.0.downsample.1"`` (also
  timm's names)."""
  rename = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
  return ".".join(rename.get(m, m.replace("_", ".")) for m in modules)


def _hf_module(modules: tuple[str, ...], prefix: str = "resnet.") -> str:
  """``("layer1_0", "bn2")`` -> ``"resnet.encoder.stages.0.layers.0.layer.1.
  normalization"``: transformers' ``ResNetForImageClassification`` (``prefix``
  "" for ``ResNetModel``)."""
  *block, layer = modules
  kind = "convolution" if "conv" in layer else "normalization"
  if not block:
    return f"{prefix}embedder.embedder.{kind}"
  stage, index = block[0][len("layer"):].split("_")
  part = ("shortcut" if layer.startswith("downsample")
          else f"layer.{int(layer[-1]) - 1}")
  return f"{prefix}encoder.stages.{int(stage) - 1}.layers.{index}.{part}.{kind}"


def key_naming(keys, path: str = "") -> tuple[Callable[..., str], str]:
  """``(module name function, layout name)`` of a ResNet state dict."""
  if any(_HF_KEY.match(k) for k in keys):
    prefix = "resnet." if any(k.startswith("resnet.") for k in keys) else ""
    return functools.partial(_hf_module, prefix=prefix), "Hugging Face"
  if any(_TV_KEY.match(k) for k in keys):
    return _torchvision_module, "torchvision"
  raise weight_files.MismatchError(
      f"{path}: not a ResNet state dict in torchvision/timm or Hugging Face "
      f"layout; first keys: {', '.join(sorted(keys)[:8]) or '(no tensors)'}")


def stem_width(tensors: Mapping[str, np.ndarray],
               path: str = "") -> float | None:
  """Width multiplier of a ResNet state dict (stem channels / 64), or None."""
  stem = tensors.get(key_naming(tensors, path)[0](("conv1",)) + ".weight")
  return None if stem is None else stem.shape[0] / 64


def _structure(keys) -> tuple[str, tuple[int, ...]]:
  """``(block kind, blocks per stage)`` from the key names of any naming."""
  sizes, bottleneck = {}, False
  for key in keys:
    m = _BLOCK_KEY.search(key)
    if m:
      sizes[int(m[1])] = max(sizes.get(int(m[1]), 0), int(m[2]) + 1)
    bottleneck |= "conv3" in key or ".layer.2." in key
  return ("bottleneck" if bottleneck else "basic",
          tuple(sizes[s] for s in sorted(sizes)))


def _depth(structure) -> int | str | None:
  return next((d for d, s in RESNET_STAGES.items() if s == structure), None)


def _describe(structure) -> str:
  blocks = f"{structure[0]} blocks {'-'.join(map(str, structure[1]))}"
  return (f"ResNet-{_depth(structure)} ({blocks})" if _depth(structure)
          else f"ResNet with {blocks}")


def _hint(tensors, names, stem: int, path: str) -> str | None:
  """A likely cause of a mismatch, or None."""
  if any(k.startswith("conv1.0.") for k in tensors):
    return ("a deep-stem ResNet (timm resnet*c/d, 'conv1.0/1/3'); only the "
            "torchvision 7x7-stem ResNet is supported")
  held, model = _structure(tensors), _structure(names)
  if held != model:
    depth = _depth(held)
    fix = f"set model.depth={depth}" if depth else "no ResNet depth fits it"
    return f"the file holds a {_describe(held)}; {fix}"
  width = stem_width(tensors, path)
  if width and round(width * 64) != stem:
    return (f"the file has width {width:g} (stem {round(width * 64)} "
            f"channels), the model {stem / 64:g}; set model.width={width:g}")
  return None


def _check_hf_config(path: str) -> None:
  """Rejects HF ResNet variants whose difference the weights cannot show."""
  config_path = os.path.join(os.path.dirname(path), "config.json")
  if not os.path.isfile(config_path):
    return
  with open(config_path) as f:
    config = json.load(f)
  problems = [text for bad, text in (
      (config.get("downsample_in_bottleneck"), "downsample_in_bottleneck=true "
       "(stride on the 1x1 conv, ResNet v1; the backbone is v1.5: on the 3x3)"),
      (config.get("downsample_in_first_stage"), "downsample_in_first_stage="
       "true (stride 2 in stage 1)"),
      (config.get("hidden_act", "relu") != "relu",
       f"hidden_act={config.get('hidden_act')!r} (the backbone uses relu)"))
              if bad]
  if config.get("model_type") == "resnet" and problems:
    raise weight_files.MismatchError(
        f"{path}: its {config_path} describes a ResNet the backbone does not "
        f"implement: {'; '.join(problems)}")


def load(variables: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
         path: str = "") -> dict[str, Any]:
  """``variables`` (the trunk's ``{"params", "batch_stats"}``, arrays or
  shapes) filled from a torchvision/timm or Hugging Face ResNet state dict
  (``weight_files.read(path)``; ``path`` names it in errors)."""
  module_key, layout = key_naming(tensors, path)
  if layout == "Hugging Face" and path:
    _check_hf_config(path)
  names = ["/".join(k) for k in traverse_util.flatten_dict(dict(variables))]
  stem = variables["params"]["conv1"]["kernel"].shape[-1]
  what = (f"a {_describe(_structure(names))} of width {stem / 64:g} "
          f"({layout} names)")
  return weight_files.fill(
      variables, tensors, module_key, path=path, what=what, ignore=_IGNORED,
      hint=lambda: _hint(tensors, names, stem, path))
