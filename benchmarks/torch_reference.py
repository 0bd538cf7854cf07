"""The same network and train steps in plain PyTorch: the benchmark's reference.

Used only by ``benchmarks/`` (``rapool_jax`` never imports torch at
module level). ResNet v1.5 in torchvision's topology (written out: the
installed torch has no matching torchvision), dropout after each of the four
stages, a 1x1 segmentation conv to 2 channels, the lesion score map
``S = softmax(h)[:, 1]``, an FCN-style stride-32 ``ConvTranspose2d`` (kernel 64,
padding 16) upsampling the 2-channel logits, GAP or region pooling, and a
2-way linear classifier.

The three train steps match the project's stages (``config_lib.paper_stages``):

- ``classification``: GAP, cross-entropy, backbone + classifier train.
- ``segmentation``: only the seg conv trains; the backbone runs in eval mode
  under ``torch.no_grad`` (frozen BatchNorm statistics, no dropout).
- ``joint``: region pooling, ``L = CE + lambda_seg * pixel CE`` (lambda 7.5).

Each step gathers its batch from uint8 images held on the device and augments
it there (random crop, rotation, flips, with one sampling grid for image and
mask), as the JAX step does, so both frameworks time the same work.
Optimizer: SGD, momentum 0.9, weight decay 5e-4 (coupled, torch's own).
Options: bf16 autocast (``amp``), ``channels_last`` and ``torch.compile``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

# The same topologies as the JAX model, by construction.
from rapool_jax.models.resnet import RESNET_STAGES, normalize_depth

STEP_KINDS = ("classification", "segmentation", "joint")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes: int, planes: int, stride: int = 1,
               downsample: nn.Module | None = None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    residual = x if self.downsample is None else self.downsample(x)
    return F.relu(y + residual)


class Bottleneck(nn.Module):
  """torchvision v1.5 bottleneck: the stride sits on the 3x3 conv."""

  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int = 1,
               downsample: nn.Module | None = None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = downsample

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    residual = x if self.downsample is None else self.downsample(x)
    return F.relu(y + residual)


class ResNet(nn.Module):
  """ResNet v1.5 trunk with dropout after each stage: ``[B, 3, H, W]`` ->
  ``[B, C, H/32, W/32]``."""

  def __init__(self, depth: int | str = 50, width: float = 1.0,
               dropout_rate: float = 0.0):
    super().__init__()
    kind, stages = RESNET_STAGES[normalize_depth(depth)]
    block = Bottleneck if kind == "bottleneck" else BasicBlock
    base = max(1, int(round(64 * width)))
    self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(base)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    inplanes = base
    layers = []
    for stage, num_blocks in enumerate(stages):
      planes = base * 2**stage
      stride = 1 if stage == 0 else 2
      blocks = []
      for i in range(num_blocks):
        s = stride if i == 0 else 1
        downsample = None
        if i == 0 and (s != 1 or inplanes != planes * block.expansion):
          downsample = nn.Sequential(
              nn.Conv2d(inplanes, planes * block.expansion, 1, s, bias=False),
              nn.BatchNorm2d(planes * block.expansion))
        blocks.append(block(inplanes, planes, s, downsample))
        inplanes = planes * block.expansion
      blocks.append(nn.Dropout(dropout_rate))
      layers.append(nn.Sequential(*blocks))
    self.layer1, self.layer2, self.layer3, self.layer4 = layers
    self.num_features = inplanes

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def bilinear_weight(stride: int, channels: int) -> torch.Tensor:
  """FCN bilinear init of a ``2*stride`` transposed conv, ``[C, C, k, k]``."""
  size = 2 * stride
  factor = (size + 1) // 2
  center = factor - 0.5 if size % 2 == 0 else factor - 1
  og = torch.arange(size, dtype=torch.float32)
  filt1d = 1 - (og - center).abs() / factor
  weight = torch.zeros(channels, channels, size, size)
  for c in range(channels):
    weight[c, c] = torch.outer(filt1d, filt1d)
  return weight


class RAPoolNet(nn.Module):
  """Backbone + segmentation branch + pooled classifier (paper Fig. 4).

  ``forward(x [B, 3, H, W], pooling, frozen_backbone)`` returns
  ``(logits [B, K], seg_logits [B, 2, H, W])``; ``frozen_backbone`` runs the
  trunk under ``torch.no_grad`` (Step 3).
  """

  def __init__(self, depth: int | str = 50, width: float = 1.0,
               dropout_rate: float = 0.2, num_classes: int = 2,
               stride: int = 32):
    super().__init__()
    self.backbone = ResNet(depth, width, dropout_rate)
    c = self.backbone.num_features
    self.seg_conv = nn.Conv2d(c, 2, 1)
    self.seg_upsample = nn.ConvTranspose2d(2, 2, 2 * stride, stride=stride,
                                           padding=stride // 2)
    with torch.no_grad():
      self.seg_upsample.weight.copy_(bilinear_weight(stride, 2))
      self.seg_upsample.bias.zero_()
    self.classifier = nn.Linear(c, num_classes)

  def forward(self, x, pooling: str = "gap", frozen_backbone: bool = False):
    if frozen_backbone:
      with torch.no_grad():
        features = self.backbone(x)
    else:
      features = self.backbone(x)
    # The 2-channel head runs in float32 (its softmax weights the pooling).
    with torch.autocast(x.device.type, enabled=False):
      features = features.float()
      seg = self.seg_conv(features)
      seg_logits = self.seg_upsample(seg)
      if pooling == "gap":
        pooled = features.mean((2, 3))
      elif pooling == "region":
        score_map = torch.softmax(seg, dim=1)[:, 1:2]
        pooled = (features * score_map).mean((2, 3))
      else:
        raise ValueError(f"pooling must be 'gap' or 'region', got {pooling!r}")
      logits = self.classifier(pooled)
    return logits, seg_logits


def augment(images, masks, idx, crop: int, rotate_degrees: float = 180.0,
            flip: bool = True, generator: torch.Generator | None = None):
  """Gathers ``images[idx]`` (uint8 ``[N, 3, S, S]``) and masks (uint8
  ``[N, S, S]``); random crop + rotation + flips with one grid for both.

  Returns normalised float32 images ``[B, 3, crop, crop]`` and int64 masks
  ``[B, crop, crop]``.
  """
  x = images[idx].float()
  m = masks[idx].float()[:, None]
  b, size = x.shape[0], x.shape[-1]
  dev = x.device
  rnd = torch.rand(b, 5, device=dev, generator=generator)
  angle = (rnd[:, 0] * 2 - 1) * math.radians(rotate_degrees)
  margin = size - crop
  offset = torch.floor(rnd[:, 1:3] * (margin + 1))
  fl = (torch.where(rnd[:, 3:5] < 0.5, -1.0, 1.0) if flip
        else torch.ones(b, 2, device=dev))   # [B, 2]: row, column flips
  # affine_grid maps normalised output coords to normalised input coords.
  scale = crop / size
  cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
  center = (offset + (crop - 1) / 2) * 2 / (size - 1) - 1   # [B, 2] (row, col)
  theta = torch.stack([
      torch.stack([cos * fl[:, 1], -sin * fl[:, 0], center[:, 1]], -1),
      torch.stack([sin * fl[:, 1], cos * fl[:, 0], center[:, 0]], -1)], 1)
  grid = F.affine_grid(theta, (b, 1, crop, crop), align_corners=True)
  x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                    align_corners=True)
  m = F.grid_sample(m, grid, mode="bilinear", padding_mode="border",
                    align_corners=True)
  mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1) * 255
  std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1) * 255
  return (x - mean) / std, (m[:, 0] >= 0.5).long()


@dataclasses.dataclass
class StepOptions:
  """How the reference runs: bf16 autocast, memory format, torch.compile."""

  amp: bool = False
  channels_last: bool = True
  compile: bool = False
  lambda_seg: float = 7.5
  lr: float = 1e-3
  momentum: float = 0.9
  weight_decay: float = 5e-4
  crop: int = 224
  rotate_degrees: float = 180.0


class TrainStep:
  """One stage's train step on data held on ``device``.

  ``step(idx)`` runs one SGD step on ``images[idx]`` and returns the loss
  tensor without synchronising; ``sync()`` waits for the device.
  ``compile_error`` holds why ``torch.compile`` fell back to eager, if it did.
  """

  def __init__(self, model: RAPoolNet, kind: str, images, masks, labels,
               options: StepOptions, device: torch.device):
    if kind not in STEP_KINDS:
      raise ValueError(f"step kind must be one of {STEP_KINDS}, got {kind!r}")
    self.model, self.kind = model, kind
    self.options, self.device = options, device
    self.images, self.masks, self.labels = images, masks, labels
    frozen = {"classification": ("seg_conv", "seg_upsample"),
              "segmentation": ("backbone", "classifier", "seg_upsample"),
              "joint": ()}[kind]
    trainable = []
    for name, p in model.named_parameters():
      p.requires_grad_(not name.split(".")[0] in frozen)
      if p.requires_grad:
        trainable.append(p)
    self.optimizer = torch.optim.SGD(
        trainable, lr=options.lr, momentum=options.momentum,
        weight_decay=options.weight_decay)
    self.pooling = "region" if kind == "joint" else "gap"
    self.compile_error = None
    self._forward = model
    self._compile_pending = False
    if options.compile:
      compiled = compile_model(model)
      if isinstance(compiled, str):
        self.compile_error = compiled
      else:
        self._forward, self._compile_pending = compiled, True
    self.generator = torch.Generator(device=device).manual_seed(0)

  def step(self, idx):
    if not self._compile_pending:
      return self._step(idx)
    # torch.compile fails lazily, at the first call: fall back to eager then.
    self._compile_pending = False
    try:
      return self._step(idx)
    except Exception as e:  # pylint: disable=broad-except
      self.compile_error = f"{type(e).__name__}: {str(e)[:300]}"
      self._forward = self.model
      self.optimizer.zero_grad(set_to_none=True)
      return self._step(idx)

  def _step(self, idx):
    opts = self.options
    x, m = augment(self.images, self.masks, idx, opts.crop,
                   opts.rotate_degrees, generator=self.generator)
    y = self.labels[idx]
    if opts.channels_last:
      x = x.contiguous(memory_format=torch.channels_last)
    seg_only = self.kind == "segmentation"
    # Step 3 freezes the backbone: eval mode keeps BatchNorm statistics fixed.
    self.model.train(not seg_only)
    with torch.autocast(self.device.type, dtype=torch.bfloat16,
                        enabled=opts.amp):
      logits, seg_logits = self._forward(x, self.pooling, seg_only)
    if self.kind == "classification":
      loss = F.cross_entropy(logits, y)
    elif seg_only:
      loss = F.cross_entropy(seg_logits, m)
    else:
      loss = (F.cross_entropy(logits, y)
              + opts.lambda_seg * F.cross_entropy(seg_logits, m))
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return loss

  def sync(self):
    if self.device.type == "cuda":
      torch.cuda.synchronize(self.device)


def compile_model(model):
  """``torch.compile(model)`` or, where it is unavailable, the reason (str).

  Dynamo's caches are reset first: every benchmark row builds a new model
  (new guards on the same ``forward``), and past the recompile limit dynamo
  would silently run eager; a second batch size would also turn on dynamic
  shapes, which compile to slower kernels.
  """
  try:
    torch._dynamo.reset()  # pylint: disable=protected-access
    return torch.compile(model)
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {e}"


def make_model(depth: int | str = 50, width: float = 1.0,
               dropout_rate: float = 0.2, num_classes: int = 2,
               channels_last: bool = True,
               device: torch.device | str = "cpu") -> RAPoolNet:
  model = RAPoolNet(depth, width, dropout_rate, num_classes).to(device)
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
  return model


def synthetic_data(num: int, size: int, num_classes: int = 2,
                   device: torch.device | str = "cpu", seed: int = 0):
  """uint8 images ``[N, 3, S, S]``, uint8 masks ``[N, S, S]``, labels."""
  g = torch.Generator().manual_seed(seed)
  images = torch.randint(0, 256, (num, 3, size, size), generator=g,
                         dtype=torch.uint8)
  yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
  disc = ((yy - size / 2)**2 + (xx - size / 2)**2) < (size / 3)**2
  masks = disc[None].expand(num, -1, -1).to(torch.uint8).contiguous()
  labels = torch.randint(0, num_classes, (num,), generator=g)
  return images.to(device), masks.to(device), labels.to(device)


def default_device() -> torch.device:
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def time_steps(step: TrainStep, batch: int, num_steps: int,
               num_examples: int) -> float:
  """Runs ``num_steps`` steps and returns the wall time in seconds."""
  g = torch.Generator().manual_seed(1)
  idxs = [torch.randint(0, num_examples, (batch,), generator=g).to(step.device)
          for _ in range(num_steps)]
  step.sync()
  t0 = time.perf_counter()
  for idx in idxs:
    step.step(idx)
  step.sync()
  return time.perf_counter() - t0


def eval_forward(model: RAPoolNet, images, options: StepOptions,
                 device: torch.device):
  """Inference (region pooling) on normalised-on-the-fly uint8 crops."""
  model.eval()
  mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
  std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
  with torch.inference_mode(), torch.autocast(
      device.type, dtype=torch.bfloat16, enabled=options.amp):
    x = (images.float() - mean) / std
    if options.channels_last:
      x = x.contiguous(memory_format=torch.channels_last)
    logits, seg_logits = model(x, "region")
    return torch.softmax(logits.float(), -1), seg_logits.argmax(1)


def runtime_info() -> dict[str, Any]:
  return {"torch_version": torch.__version__,
          "torch_threads": torch.get_num_threads(),
          "cuda": torch.cuda.is_available()}


# ----------------------------------------------------------------------------
# Runners for benchmarks.timing, beside benchmarks.runners' JAX steps.


class _Runner:
  """Peak device memory on CUDA (None elsewhere: the harness reads the
  process's peak RSS instead); no FLOP count."""

  framework = "torch"
  cost = {"gflop_per_step": None, "xla_mem_bytes": None}
  compile_s = None  # the harness's warm-up sets it when torch.compile is on

  def device_peak(self):
    if self.device.type != "cuda":
      return None
    return torch.cuda.max_memory_allocated(self.device)

  def reset_device_peak(self):
    if self.device.type == "cuda":
      torch.cuda.reset_peak_memory_stats(self.device)

  def compile_fields(self) -> dict[str, Any]:
    """Whether torch.compile held and, if not, why."""
    error = getattr(getattr(self, "step", self), "compile_error", None)
    return {"torch_compile": bool(self.options.compile and error is None),
            **({"torch_compile_error": error} if error else {})}


class TrainRunner(_Runner):
  """``TrainStep`` at a benchmark size (``depth``, ``width``, ``crop``,
  ``image_size``)."""

  def __init__(self, size: dict, kind: str, batch: int, amp: bool,
               compile_torch: bool, seed: int = 0):
    torch.manual_seed(seed)
    self.device, self.batch = default_device(), batch
    if self.device.type == "cuda":
      torch.backends.cudnn.benchmark = True
    self.options = StepOptions(amp=amp, channels_last=True,
                               compile=compile_torch, crop=size["crop"])
    model = make_model(size["depth"], size["width"], dropout_rate=0.2,
                       device=self.device)
    images, masks, labels = synthetic_data(batch, size["image_size"],
                                           device=self.device, seed=seed)
    self.step = TrainStep(model, kind, images, masks, labels, self.options,
                          self.device)

  def run(self, num_steps: int) -> float:
    return time_steps(self.step, self.batch, num_steps, self.batch)


class EvalRunner(_Runner):
  """``eval_forward`` on centre crops; torch.compile falls back to eager
  where its first call fails."""

  def __init__(self, size: dict, batch: int, amp: bool,
               compile_torch: bool = False, seed: int = 0):
    self.device, self.batch = default_device(), batch
    self.options = StepOptions(amp=amp, channels_last=True,
                               compile=compile_torch)
    self.model = make_model(size["depth"], size["width"], device=self.device)
    self.eager_model, self.compile_error = self.model, None
    self.compile_pending = False
    if compile_torch:
      compiled = compile_model(self.model)
      if isinstance(compiled, str):
        self.compile_error = compiled
      else:
        self.model, self.compile_pending = compiled, True
    self.images, _, _ = synthetic_data(batch, size["crop"], device=self.device,
                                       seed=seed)

  def run(self, num_steps: int) -> float:
    if self.compile_pending:
      # torch.compile fails lazily, at the first call: fall back to eager.
      self.compile_pending = False
      try:
        eval_forward(self.model, self.images, self.options, self.device)
      except Exception as e:  # pylint: disable=broad-except
        self.compile_error = f"{type(e).__name__}: {str(e)[:300]}"
        self.model = self.eager_model
    if self.device.type == "cuda":
      torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(num_steps):
      out = eval_forward(self.model, self.images, self.options, self.device)
    out[0].cpu()
    return time.perf_counter() - t0


def runner(kind: str, batch: int, size: dict, amp: bool, compile_torch: bool):
  """The reference's runner for a row (``runners.jax_runner``'s twin)."""
  if kind == "eval":
    return EvalRunner(size, batch, amp, compile_torch)
  return TrainRunner(size, kind, batch, amp, compile_torch)


def release_cache():
  """Returns torch's cached GPU blocks, so the next row's JAX step has room."""
  if torch.cuda.is_available():
    torch.cuda.empty_cache()
