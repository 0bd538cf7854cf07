"""Writes the ResNet-50 parity fixture of ``tests/test_pretrained.py``.

Run by hand (needs torch and transformers; neither is a test dependency):

    pip install torch==2.13.0 && pip install transformers
    python scripts/make_resnet_parity_fixture.py

The reference is ``transformers.ResNetForImageClassification`` configured as
torchvision's ResNet-50 at width 1/8 (stem 8, bottleneck widths 8-16-32-64,
stage outputs 32-64-128-256): stride on the 3x3 conv (``downsample_in_bottleneck
=False``), no stride in stage 1 (``downsample_in_first_stage=False``), a
projection shortcut on each stage's first block. HF pads every conv with
``kernel // 2`` and pools 3x3/2 with padding 1, which is torchvision's padding,
so the two differ only in key names. Random init, with BatchNorm affine params
and running statistics randomised so that a mix-up of scale/bias/mean/var (or a
missed BN) cannot pass.

Weights are rounded to float16 and stored as float16 to halve the fixture; the
reference runs in float32 on exactly those rounded values, so the comparison
stays exact up to float32 arithmetic (it also exercises the loader's cast).

Outputs in ``tests/fixtures/``:
  resnet50_w8_hf.safetensors           HF key names (``resnet.encoder.stages...``).
  resnet50_w8_torchvision.safetensors  the same tensors, torchvision key names.
  resnet50_w8_reference.npz            ``images [2, 72, 88, 3]`` (NHWC float16),
      ``features [2, 3, 3, 256]`` (last feature map before pooling, NHWC),
      ``logits [2, 10]``.

Before writing, the torchvision-named tensors are loaded with ``strict=True`` into
a small torchvision-architecture module defined below and must reproduce the HF
outputs: that checks the renaming independently of ``rapool_jax`` (whose
mapping is ``rapool_jax/models/resnet.py:load``).
"""

from __future__ import annotations

import argparse
import json
import os
import re

import numpy as np
import safetensors.torch
import torch
from torch import nn
import transformers

HIDDEN_SIZES = [32, 64, 128, 256]
DEPTHS = [3, 4, 6, 3]
STEM = 8
NUM_LABELS = 10
# Odd sizes at several levels (9 -> 5, 11 -> 6) so that any padding asymmetry
# between implementations shows up at the borders.
IMAGE_SHAPE = (2, 3, 72, 88)


def build_reference(seed: int) -> nn.Module:
  torch.manual_seed(seed)
  config = transformers.ResNetConfig(
      num_channels=3, embedding_size=STEM, hidden_sizes=HIDDEN_SIZES,
      depths=DEPTHS, layer_type="bottleneck", hidden_act="relu",
      downsample_in_first_stage=False, downsample_in_bottleneck=False,
      num_labels=NUM_LABELS)
  model = transformers.ResNetForImageClassification(config)
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        c = module.num_features
        # Chosen so activations stay O(1) through the 16 blocks.
        module.weight.copy_(0.5 + 0.5 * torch.rand(c, generator=gen))
        module.bias.copy_(0.2 * torch.randn(c, generator=gen))
        module.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
        module.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
        module.num_batches_tracked.fill_(1000)
    for tensor in model.state_dict().values():
      if tensor.is_floating_point():
        tensor.copy_(tensor.half().float())
  return model.eval()


def hf_to_torchvision(key: str) -> str:
  """``resnet.encoder.stages.1.layers.0.layer.2.convolution.weight`` -> ``layer2.0.conv3.weight``."""
  bn = {"running_mean", "running_var", "num_batches_tracked", "weight", "bias"}
  if key.startswith("classifier.1."):
    return "fc." + key[len("classifier.1."):]
  m = re.fullmatch(r"resnet\.embedder\.embedder\.(convolution|normalization)\.(\w+)", key)
  if m:
    return ("conv1." if m[1] == "convolution" else "bn1.") + m[2]
  m = re.fullmatch(r"resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)", key)
  if m is None:
    raise KeyError(key)
  prefix = f"layer{int(m[1]) + 1}.{m[2]}."
  rest = m[3]
  m = re.fullmatch(r"shortcut\.(convolution|normalization)\.(\w+)", rest)
  if m:
    return prefix + ("downsample.0." if m[1] == "convolution" else "downsample.1.") + m[2]
  m = re.fullmatch(r"layer\.(\d)\.(convolution|normalization)\.(\w+)", rest)
  if m and (m[2] == "convolution" or m[3] in bn):
    j = int(m[1]) + 1
    return prefix + (f"conv{j}." if m[2] == "convolution" else f"bn{j}.") + m[3]
  raise KeyError(key)


class TorchvisionBottleneck(nn.Module):
  """torchvision.models.resnet.Bottleneck (v1.5), same attribute names."""

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU()
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + identity)


class TorchvisionResNet(nn.Module):
  """torchvision.models.resnet.ResNet with Bottleneck, stem width ``stem``."""

  def __init__(self, layers, stem, num_classes):
    super().__init__()
    self.conv1 = nn.Conv2d(3, stem, 7, 2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(stem)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, padding=1)
    inplanes = stem
    for i, blocks in enumerate(layers):
      planes, stride = stem * 2**i, 1 if i == 0 else 2
      downsample = nn.Sequential(
          nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
          nn.BatchNorm2d(planes * 4))
      modules = [TorchvisionBottleneck(inplanes, planes, stride, downsample)]
      inplanes = planes * 4
      modules += [TorchvisionBottleneck(inplanes, planes) for _ in range(blocks - 1)]
      setattr(self, f"layer{i + 1}", nn.Sequential(*modules))
    self.fc = nn.Linear(inplanes, num_classes)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    features = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return features, self.fc(torch.flatten(features.mean((2, 3)), 1))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.normpath(os.path.join(
      os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests",
      "fixtures")))
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  torch.set_num_threads(2)

  model = build_reference(args.seed)
  images = torch.randn(IMAGE_SHAPE, generator=torch.Generator().manual_seed(7))
  images = images.half().float()  # stored as float16 below
  with torch.no_grad():
    out = model(images, output_hidden_states=True)
    features = out.hidden_states[-1]
    logits = out.logits
  print(f"features {tuple(features.shape)} std {features.std():.3f} "
        f"max {features.abs().max():.3f}; logits std {logits.std():.3f}")

  hf_state = {k: v.contiguous() for k, v in model.state_dict().items()}
  tv_state = {hf_to_torchvision(k): v for k, v in hf_state.items()}
  if len(tv_state) != len(hf_state):
    raise RuntimeError("renaming is not one-to-one")

  tv_model = TorchvisionResNet(DEPTHS, STEM, NUM_LABELS).eval()
  tv_model.load_state_dict(tv_state, strict=True)
  with torch.no_grad():
    tv_features, tv_logits = tv_model(images)
  for name, a, b in (("features", tv_features, features),
                     ("logits", tv_logits, logits)):
    err = float((a - b).abs().max() / b.abs().max())
    print(f"torchvision-named copy vs HF {name}: max rel err {err:.2e}")
    if err > 1e-6:
      raise RuntimeError(f"renamed weights do not reproduce HF {name}")

  def as_half(state):
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}

  metadata = {
      "description": "random-init ResNet-50 (v1.5) at width 1/8 for parity tests",
      "reference": f"transformers {transformers.__version__} "
                   f"ResNetForImageClassification, torch {torch.__version__}",
      "config": json.dumps({"embedding_size": STEM, "hidden_sizes": HIDDEN_SIZES,
                            "depths": DEPTHS, "num_labels": NUM_LABELS}),
      "seed": str(args.seed),
  }
  safetensors.torch.save_file(
      as_half(hf_state), os.path.join(args.out, "resnet50_w8_hf.safetensors"),
      metadata={**metadata, "layout": "hf"})
  safetensors.torch.save_file(
      as_half(tv_state),
      os.path.join(args.out, "resnet50_w8_torchvision.safetensors"),
      metadata={**metadata, "layout": "torchvision"})
  np.savez(
      os.path.join(args.out, "resnet50_w8_reference.npz"),
      images=images.permute(0, 2, 3, 1).numpy().astype(np.float16),
      features=features.permute(0, 2, 3, 1).numpy(),
      logits=logits.numpy())
  for name in sorted(os.listdir(args.out)):
    size = os.path.getsize(os.path.join(args.out, name))
    print(f"wrote {os.path.join(args.out, name)} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
  main()
