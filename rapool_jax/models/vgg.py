"""VGG (torchvision ``features`` topology) as a backbone in Flax Linen, NHWC.

The trunk only, with ``ResNet``'s interface; the 4096-wide dense layers are
not part of it (the paper's heads replace them). Conv layers keep their bias
with BatchNorm, as torchvision's ``vgg16_bn`` does, so ``load`` (torchvision's
ImageNet weights) is a rename and a transpose. Module names follow the VGG
paper (``conv1_1`` ... ``conv5_3``, ``bn1_1``, ``dropout1`` ... ``dropout5``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from rapool_jax import errors
from rapool_jax import weight_files
from rapool_jax.models.resnet import BN_EPSILON, BN_MOMENTUM, ModuleDef

# depth -> output channels of the convs of each of the five blocks.
VGG_BLOCKS = {
    "11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
           (512, 512, 512)),
    "19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512),
           (512, 512, 512, 512)),
}


class VGG(nn.Module):
  """VGG trunk: five blocks of 3x3 conv (+ BatchNorm) + ReLU, each then a pool.

  Attributes:
    blocks: output channels of each conv, per block (``VGG_BLOCKS``).
    batch_norm: BatchNorm after every conv (torchvision ``vgg*_bn``).
    width: width multiplier on the channel counts.
    output_stride: 32 (five 2x2/2 max pools), 16 or 8. Below 32 the last
      pool(s) keep stride 1 (a 3x3/1 max pool, as DeepLab-v1's VGG) and the
      convs after them are dilated, so pretrained kernels see the same
      context, as ``ResNet`` does with ``replace_stride_with_dilation``.
    dropout_rate: dropout after each block's pool.
    dtype: compute dtype; parameters stay float32.
    norm, act, dropout, pool: the layers, as in ``resnet.ResNet``.
  """

  blocks: Sequence[Sequence[int]]
  batch_norm: bool = True
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
    """As ``ResNet.__call__``."""
    bn_train = train if bn_train is None else bn_train
    if self.output_stride not in (8, 16, 32):
      raise errors.UserError(
          f"model.output_stride must be 8, 16 or 32, got {self.output_stride}")
    # Blocks past `strided` pool with stride 1; the convs after them dilate.
    strided = len(self.blocks) - {32: 0, 16: 1, 8: 2}[self.output_stride]
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), dtype=self.dtype)
    norm = functools.partial(self.norm, use_running_average=not bn_train,
                             momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                             dtype=self.dtype)
    x = x.astype(self.dtype)
    dilation = 1
    for b, convs in enumerate(self.blocks, start=1):
      for i, channels in enumerate(convs, start=1):
        x = conv(max(1, int(round(channels * self.width))),
                 padding=((dilation, dilation),) * 2,
                 kernel_dilation=dilation, name=f"conv{b}_{i}")(x)
        if self.batch_norm:
          x = norm(name=f"bn{b}_{i}")(x)
        x = self.act(x)
      if b > strided:
        x = self.pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        dilation *= 2
      else:
        x = self.pool(x, (2, 2), strides=(2, 2), padding=((0, 0), (0, 0)))
      x = self.dropout(rate=self.dropout_rate, deterministic=not train,
                       name=f"dropout{b}")(x)
    return x


def vgg(depth: int | str = 16, **kwargs) -> VGG:
  """Builds VGG-``depth`` (11, 13, 16 or 19); kwargs are ``VGG`` attributes."""
  depth = str(depth).lower().removeprefix("vgg")
  if depth not in VGG_BLOCKS:
    raise errors.UserError(
        f"VGG depth {depth!r} is not one of {sorted(VGG_BLOCKS)}")
  return VGG(blocks=VGG_BLOCKS[depth], **kwargs)


def torchvision_names(params: Mapping[str, Any]) -> dict[str, str]:
  """Flax module name -> torchvision ``features.<index>``, for the modules of
  a ``VGG``'s ``params`` (``conv1_1``, ``bn1_1``, ...).

  torchvision's ``make_layers`` appends Conv2d, [BatchNorm2d,] ReLU per conv and
  one MaxPool2d per block, all numbered in one ``features`` Sequential.
  """
  convs = sorted(tuple(map(int, name[len("conv"):].split("_")))
                 for name in params if name.startswith("conv"))
  names, index = {}, 0
  for n, (b, i) in enumerate(convs):
    if n and b != convs[n - 1][0]:
      index += 1  # the previous block's MaxPool2d
    names[f"conv{b}_{i}"] = f"features.{index}"
    if f"bn{b}_{i}" in params:
      index += 1
      names[f"bn{b}_{i}"] = f"features.{index}"
    index += 2  # the layer, then its ReLU
  return names


def load(variables: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
         path: str = "") -> dict[str, Any]:
  """``variables`` (the trunk's ``{"params", "batch_stats"}``, arrays or
  shapes) filled from a torchvision VGG state dict (``vgg16().state_dict()``,
  ``vgg16_bn``...; ``weight_files.read(path)``; ``path`` names it in errors)."""
  names = torchvision_names(variables["params"])
  convs = sum(name.startswith("conv") for name in names)
  return weight_files.fill(
      variables, tensors, lambda modules: names[modules[0]], path=path,
      what=f"a VGG of {convs} convs (torchvision names)",
      ignore=r"^classifier\.|num_batches_tracked$")
