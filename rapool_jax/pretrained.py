"""Step 1 of the paper: ImageNet weights from a local file into the backbone.

``weight_files`` reads the file; the backbone's own ``load`` maps the names
(``models/resnet.py``, ``models/vgg.py``). The ImageNet classifier is not
loaded: the paper's heads start from random.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from rapool_jax import weight_files
from rapool_jax.models import vgg as vgg_lib
# Not `from rapool_jax.models import resnet`: the package re-exports the
# function `resnet`, which shadows the submodule of the same name.
from rapool_jax.models.resnet import key_naming
from rapool_jax.models.resnet import load as load_resnet

# torchvision (V1 and V2 weights), timm's ResNets and microsoft/resnet-50 (its
# preprocessor_config.json) all normalise RGB in [0, 1] with these statistics.
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def preprocessing_for(path: str | os.PathLike) -> dict[str, tuple]:
  """The ``mean`` and ``std`` that go with the ResNet weights in ``path``
  (``(images - mean) / std``); raises for a file of no known layout."""
  path = os.fspath(path)
  key_naming(weight_files.read(path), path)
  return dict(IMAGENET)


def load_pretrained(variables: Mapping[str, Any], model_config) -> dict:
  """The whole network's ``{"params", "batch_stats"}`` with the backbone's
  from ``config.model.pretrained`` (a ResNet or VGG file, as
  ``model_config.backbone``); the heads' stay as they are."""
  path = os.fspath(model_config.pretrained)
  load = (load_resnet if model_config.get("backbone", "resnet") == "resnet"
          else vgg_lib.load)
  backbone = {c: tree["backbone"] for c, tree in variables.items()
              if "backbone" in tree}
  loaded = load(backbone, weight_files.read(path), path)
  return {**variables, **{c: {**variables[c], "backbone": tree}
                          for c, tree in loaded.items()}}
