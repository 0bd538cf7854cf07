"""ResNet v1.5 (torchvision topology) in Flax Linen, NHWC.

Layout and padding follow torchvision exactly (stride on the 3x3 conv, 1x1
projection shortcut, explicit symmetric padding) so that torchvision weights
reproduce torchvision outputs. Module names mirror torchvision's state-dict keys
(``conv1``, ``bn1``, ``layer1_0/conv1``, ``layer1_0/downsample_conv``, ...), which
keeps the weight mapping in ``pretrained.py`` a simple rename.

As in flax's ``examples/imagenet/models.py``, blocks take their conv, norm and
activation as modules; ``ResNet`` also takes the dropout after each stage and
the stem's pool. The defaults are flax's layers (``config.systems`` swaps in
the optional hashed dropout through ``rapool_net.build_model``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

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


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34). ``[B, H, W, C]`` -> ``[B, H/s, W/s, F]``."""

  features: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: int = 1
  dilation: int = 1
  first_dilation: int = 1
  downsample: bool = False

  expansion = 1

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.features, (3, 3), (self.strides, self.strides),
                  padding=_pad(self.first_dilation),
                  kernel_dilation=self.first_dilation, name="conv1")(x)
    y = self.act(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), padding=_pad(self.dilation),
                  kernel_dilation=self.dilation, name="conv2")(y)
    y = self.norm(name="bn2")(y)
    if self.downsample:
      residual = self.conv(self.features, (1, 1), (self.strides, self.strides),
                           padding="VALID", name="downsample_conv")(x)
      residual = self.norm(name="downsample_bn")(residual)
    return self.act(y + residual)


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 x4 (ResNet-50/101/152).
  ``[B, H, W, C]`` -> ``[B, H/s, W/s, 4F]``."""

  features: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: int = 1
  dilation: int = 1
  first_dilation: int = 1
  downsample: bool = False

  expansion = 4

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.features, (1, 1), padding="VALID", name="conv1")(x)
    y = self.act(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), (self.strides, self.strides),
                  padding=_pad(self.first_dilation),
                  kernel_dilation=self.first_dilation, name="conv2")(y)
    y = self.act(self.norm(name="bn2")(y))
    y = self.conv(self.features * 4, (1, 1), padding="VALID", name="conv3")(y)
    y = self.norm(name="bn3")(y)
    if self.downsample:
      residual = self.conv(self.features * 4, (1, 1),
                           (self.strides, self.strides), padding="VALID",
                           name="downsample_conv")(x)
      residual = self.norm(name="downsample_bn")(residual)
    return self.act(y + residual)


class ResNet(nn.Module):
  """ResNet v1.5 trunk: ``[B, H, W, 3]`` -> ``[B, H/os, W/os, C]``.

  Attributes:
    stage_sizes: blocks per stage.
    block: "basic" or "bottleneck".
    width: width multiplier on the base widths (64, 128, 256, 512).
    output_stride: 32 (paper), 16 or 8; reached by dilating the last stage(s)
      as torchvision's ``replace_stride_with_dilation`` does.
    dropout_rate: dropout after each of the four stages (the paper's regulariser).
    num_classes: if set, adds GAP + a dense ``fc`` head (ImageNet layout).
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
  num_classes: int | None = None
  dtype: Any = jnp.float32
  norm: ModuleDef = nn.BatchNorm
  act: Callable = nn.relu
  dropout: ModuleDef = nn.Dropout
  pool: Callable = nn.max_pool

  @property
  def num_features(self) -> int:
    expansion = 4 if self.block == "bottleneck" else 1
    return self._stage_width(3) * expansion

  def _stage_width(self, stage: int) -> int:
    return max(1, int(round(64 * self.width))) * 2**stage

  @nn.compact
  def __call__(self, x, train: bool = False, bn_train: bool | None = None):
    """``train`` enables dropout and, unless ``bn_train`` says otherwise,
    batch statistics in BatchNorm (``bn_train=False``: frozen statistics)."""
    bn_train = train if bn_train is None else bn_train
    if self.output_stride not in (8, 16, 32):
      raise ValueError(
          f"model.output_stride must be 8, 16 or 32, got {self.output_stride}")
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(self.norm, use_running_average=not bn_train,
                             momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                             dtype=self.dtype)
    block_cls = {"basic": BasicBlock, "bottleneck": BottleneckBlock}[self.block]
    x = x.astype(self.dtype)
    stem = self._stage_width(0)
    x = conv(stem, (7, 7), (2, 2), padding=_pad(3), name="conv1")(x)
    x = self.act(norm(name="bn1")(x))
    x = self.pool(x, (3, 3), strides=(2, 2), padding=_pad(1))

    # Stages 3 and 4 trade their stride for dilation below output stride 32.
    dilate = {32: (False, False, False, False),
              16: (False, False, False, True),
              8: (False, False, True, True)}[self.output_stride]
    in_features, dilation = stem, 1
    for stage, num_blocks in enumerate(self.stage_sizes):
      features = self._stage_width(stage)
      strides = 1 if stage == 0 else 2
      previous_dilation = dilation
      if dilate[stage]:
        dilation *= strides
        strides = 1
      for i in range(num_blocks):
        x = block_cls(
            features=features, conv=conv, norm=norm, act=self.act,
            strides=strides if i == 0 else 1,
            dilation=dilation,
            first_dilation=previous_dilation if i == 0 else dilation,
            downsample=(i == 0 and (strides != 1 or in_features
                                    != features * block_cls.expansion)),
            name=f"layer{stage + 1}_{i}")(x)
        in_features = features * block_cls.expansion
      x = self.dropout(rate=self.dropout_rate, deterministic=not train,
                       name=f"dropout{stage + 1}")(x)

    if self.num_classes is not None:
      x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      x = nn.Dense(self.num_classes, name="fc")(x)
    return x


def normalize_depth(depth: int | str) -> int | str:
  """``"50"`` -> ``50``; raises ValueError naming ``model.depth`` if unknown."""
  if isinstance(depth, str) and depth.isdigit():
    depth = int(depth)
  if depth not in RESNET_STAGES:
    raise ValueError(
        f"model.depth={depth!r} is not a ResNet depth; choose one of "
        f"{sorted(map(str, RESNET_STAGES))}")
  return depth


def resnet(depth: int | str, **kwargs) -> ResNet:
  """Builds ResNet-``depth`` (18, 34, 50, 101, 152 or "tiny")."""
  block, stages = RESNET_STAGES[normalize_depth(depth)]
  return ResNet(stage_sizes=stages, block=block, **kwargs)
