"""Step 1 of the paper: ImageNet weights from a local file into the backbone.

``weight_files`` reads the file (``.safetensors``; ``.pth``/``.pt``/``.bin``
with torch installed); the backbone's own ``load`` maps the names:
``models/resnet.py`` (torchvision, timm and Hugging Face ResNets) and
``models/vgg.py`` (torchvision VGGs). The ImageNet classifier is not loaded:
the paper's heads start from random.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from rapool_jax import weight_files
from rapool_jax.models import vgg as vgg_lib
# Not `from rapool_jax.models import resnet`: the package re-exports the
# function `resnet`, which shadows the submodule of the same name.
from rapool_jax.models.resnet import ResNet, key_naming, resnet, stem_width
from rapool_jax.models.resnet import load as load_resnet


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """Input normalisation of the weights, on RGB images scaled to [0, 1]:
  ``(images - mean) / std`` per channel."""

  mean: tuple[float, float, float]
  std: tuple[float, float, float]

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


IMAGENET = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

# torchvision (V1 and V2 weights), timm's ResNets and microsoft/resnet-50 (its
# preprocessor_config.json) all normalise with the ImageNet statistics.
PREPROCESSING = {"torchvision": IMAGENET, "Hugging Face": IMAGENET}


def preprocessing_for(path: str | os.PathLike) -> Preprocessing:
  """The input normalisation that goes with the ResNet weights in ``path``."""
  path = os.fspath(path)
  return PREPROCESSING[key_naming(weight_files.read(path), path)[1]]


def load_pretrained(variables: Mapping[str, Any], model_config) -> dict:
  """``model_config.pretrained`` into the network's ``backbone`` variables.

  Args:
    variables: the whole network's ``{"params", "batch_stats"}``.
    model_config: ``config.model`` (``backbone``: "resnet" or "vgg*").

  Returns:
    New variables: the backbone's from the file, everything else (the heads)
    as before.
  """
  path = os.fspath(model_config.pretrained)
  load = (load_resnet if model_config.get("backbone", "resnet") == "resnet"
          else vgg_lib.load)
  backbone = {c: tree["backbone"] for c, tree in variables.items()
              if "backbone" in tree}
  loaded = load(backbone, weight_files.read(path), path)
  return {**variables, **{c: {**variables[c], "backbone": tree}
                          for c, tree in loaded.items()}}


def load_backbone(path: str | os.PathLike, depth: int | str = 50,
                  **resnet_kwargs) -> tuple[ResNet, dict[str, Any]]:
  """A ResNet trunk and its variables from an ImageNet weights file.

  Args:
    path: as ``config.model.pretrained``.
    depth: 18, 34, 50, 101 or 152.
    **resnet_kwargs: ``resnet()``'s (``output_stride``, ``dropout_rate``,
      ``dtype``; ``width`` defaults to the file's).

  Returns:
    ``(module, variables)``: ``module.apply(variables, images, train=False)``
    maps normalised ``[B, H, W, 3]`` images (``preprocessing_for``) to the last
    feature map ``[B, h, w, C]``.
  """
  path = os.fspath(path)
  tensors = weight_files.read(path)
  resnet_kwargs.setdefault("width", stem_width(tensors, path) or 1.0)
  module = resnet(depth, **resnet_kwargs)
  if module.num_classes is not None:
    raise ValueError("load_backbone builds a trunk (num_classes=None); the "
                     "new head belongs to the model using it")
  shapes = jax.eval_shape(lambda: module.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  return module, load_resnet(shapes, tensors, path)
