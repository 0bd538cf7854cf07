"""Train-step throughput of the project's JAX step against the PyTorch reference.

    python -m rapool_jax.benchmark --out benchmarks/results/cpu_2core.json \
        [--device-size auto|small|full|tiny] [--steps N] [--repeats R]

For each step kind of the paper (``classification``: GAP; ``segmentation``:
only the seg conv trains; ``joint``: region pooling + lambda * pixel CE) and
each batch size, times ``rapool_jax.train.train_step`` (jitted with donated
state, data as uint8 on the device, augmentation inside jit, optimizer from
``optim.make_optimizer``, stages from ``config_lib.paper_stages``) and, in the
same process and interleaved repeat by repeat, the same step in
``rapool_jax.torch_reference``. Also times inference (``train.eval_step``),
and analyses the segmentation upsampling (FLOPs of the subpixel formulation
vs ``lax.conv_transpose``, share of the joint step).

Sizes (``--device-size``): ``full`` (the default on GPU/TPU) is ResNet-50 at
224 px in bfloat16 at the paper's batch 10 and at batch 256; ``small`` (the
default on CPU) is ResNet-50 at 224 px in float32 at batch 8, a few steps;
``tiny`` is for tests. Timing: compile, warm up, then ``repeats`` blocks of
``steps`` steps each, synchronised with ``jax.block_until_ready`` (torch:
``cuda.synchronize``); img/s is the median over blocks.

On CPU, XLA flags must be set before JAX starts its backend:
``apply_xla_flags(cpu_xla_flags())`` does that (``--xla-flags`` here).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rapool_jax import config_lib
from rapool_jax import losses
from rapool_jax import optim
from rapool_jax import train
from rapool_jax.models import rapool_net

STEP_KINDS = ("classification", "segmentation", "joint")

# Benchmark sizes. "steps" per timed block, "repeats" blocks, "warmup" steps.
SIZES = {
    "full": dict(depth="50", width=1.0, image_size=256, crop=224,
                 batches=(10, 256), eval_batch=256, dtype="bfloat16",
                 steps=20, repeats=5, warmup=3),
    "small": dict(depth="50", width=1.0, image_size=256, crop=224,
                  batches=(8,), eval_batch=8, dtype="float32",
                  steps=2, repeats=3, warmup=1),
    "tiny": dict(depth="tiny", width=0.125, image_size=72, crop=64,
                 batches=(4,), eval_batch=4, dtype="float32",
                 steps=1, repeats=1, warmup=1),
}


# ----------------------------------------------------------------------------
# XLA:CPU flags.


def cpu_xla_flags() -> str:
  """XLA flags that speed up the CPU train step (see benchmarks/README.md).

  Harmless on GPU/TPU (they only affect XLA:CPU compilations). Must be in
  ``XLA_FLAGS`` before JAX initialises its backend: use ``apply_xla_flags``.
  """
  return ""


def apply_xla_flags(flags: str) -> str:
  """Appends ``flags`` to ``$XLA_FLAGS`` (flags already there win).

  Returns the resulting ``XLA_FLAGS``. Raises RuntimeError if a JAX backend is
  already initialised, since XLA reads the variable only once.
  """
  if not flags:
    return os.environ.get("XLA_FLAGS", "")
  if _backend_initialised():
    raise RuntimeError("apply_xla_flags: a JAX backend is already running; "
                       "call it before the first JAX computation")
  current = os.environ.get("XLA_FLAGS", "").split()
  names = {f.split("=")[0] for f in current}
  merged = current + [f for f in flags.split() if f.split("=")[0] not in names]
  os.environ["XLA_FLAGS"] = " ".join(merged)
  return os.environ["XLA_FLAGS"]


def _backend_initialised() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(xla_bridge._backends)  # pylint: disable=protected-access
  except (ImportError, AttributeError):
    return False


# ----------------------------------------------------------------------------
# Memory.


def _rss_peak_reset() -> bool:
  """Resets the kernel's peak-RSS counter (Linux); False where unsupported."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _rss_peak_bytes() -> int | None:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    import resource  # pylint: disable=g-import-not-at-top
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  except ImportError:
    return None


def _jax_device_peak() -> int | None:
  stats = jax.devices()[0].memory_stats()
  return None if not stats else stats.get("peak_bytes_in_use")


class _PeakTracker:
  """Peak memory over the phases of one framework.

  Device peak (JAX ``memory_stats``, torch ``max_memory_allocated``) where the
  device reports one, else process peak RSS (VmHWM, reset per phase; it counts
  everything resident in the process, the other framework's state included).
  """

  def __init__(self, device_peak: Callable[[], int | None]):
    self.device_peak = device_peak
    self.peak = None
    self.kind = None

  @contextlib.contextmanager
  def phase(self):
    device = self.device_peak() is not None
    if not device:
      _rss_peak_reset()
    yield
    value = self.device_peak() if device else _rss_peak_bytes()
    self.kind = "device_peak" if device else "process_peak_rss"
    if value is not None:
      self.peak = max(self.peak or 0, value)


# ----------------------------------------------------------------------------
# The JAX side: the project's own train step.


def make_config(size: dict, dtype: str):
  """The paper's config (``configs/isic2017.py`` values) at benchmark size."""
  c = config_lib.base_config()
  c.data.image_size = size["image_size"]
  c.data.crop_size = size["crop"]
  c.data.rotate_degrees = 180.0
  c.model.depth = size["depth"]
  c.model.width = size["width"]
  c.model.output_stride = 32
  c.model.dropout_rate = 0.2
  c.model.dtype = dtype
  c.model.num_classes = 2
  c.stages = config_lib.paper_stages(
      classification_steps=6000, segmentation_steps=4000, joint_steps=6000,
      lr=1e-3, decay_every=2000, lambda_seg=7.5)
  return c


def synthetic_device_data(num: int, image_size: int, seed: int = 0):
  """uint8 images ``[N, S, S, 3]``, masks ``[N, S, S]``, labels, has_mask."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num, image_size, image_size, 3), np.uint8)
  yy, xx = np.mgrid[:image_size, :image_size]
  disc = ((yy - image_size / 2)**2 + (xx - image_size / 2)**2
          < (image_size / 3)**2)
  masks = np.broadcast_to(disc, (num, image_size, image_size)).astype(np.uint8)
  labels = rng.integers(0, 2, (num,)).astype(np.int32)
  has_mask = np.ones((num,), bool)
  return tuple(jnp.asarray(a) for a in (images, masks, labels, has_mask))


@functools.lru_cache(maxsize=None)
def _init_fn(model):
  return jax.jit(lambda key, x: model.init({"params": key}, x, train=False))


def init_variables(model, crop: int, seed: int = 0):
  variables = _init_fn(model)(jax.random.key(seed),
                              jnp.zeros((1, crop, crop, 3), jnp.float32))
  return {"params": variables["params"],
          "batch_stats": variables["batch_stats"]}


def _cost(compiled) -> dict[str, Any]:
  """FLOPs and XLA memory of a compiled executable (None where unreported)."""
  out = {"gflop_per_step": None, "xla_mem_bytes": None}
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    if cost and "flops" in cost:
      out["gflop_per_step"] = float(cost["flops"]) / 1e9
  except Exception:  # pylint: disable=broad-except
    pass
  try:
    mem = compiled.memory_analysis()
    out["xla_mem_bytes"] = int(mem.temp_size_in_bytes
                               + mem.argument_size_in_bytes
                               + mem.output_size_in_bytes
                               - mem.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    pass
  return out


class JaxTrainRunner:
  """``train.train_step`` for one stage, compiled ahead of time, donated state."""

  framework = "jax"

  def __init__(self, config, stage_name: str, batch: int, seed: int = 0,
               compiler_options: dict[str, Any] | None = None):
    self.batch = batch
    model = rapool_net.build_model(config.model)
    stage = config.stages[stage_name]
    variables = init_variables(model, config.data.crop_size, seed)
    tx = optim.make_optimizer(config.optimizer, stage, variables["params"])
    self.state = {"variables": variables,
                  "opt_state": jax.jit(tx.init)(variables["params"]),
                  "step": jnp.zeros((), jnp.int32)}
    images, masks, labels, has_mask = synthetic_device_data(
        batch, config.data.image_size, seed)
    self.data = dict(images=images, masks=masks, labels=labels,
                     has_mask=has_mask)
    self.key = jax.random.key(seed)
    rng = np.random.default_rng(seed)
    self.idxs = [jnp.asarray(rng.permutation(batch).astype(np.int32))
                 for _ in range(4)]
    step_kwargs = dict(model=model, tx=tx, stage=stage, data=config.data,
                       mean=tuple(config.data.mean),
                       std=tuple(config.data.std))
    if hasattr(train, "resident_train_step"):
      # The training path for a split held on the device: gather + step.
      step_fn = functools.partial(train.resident_train_step, **step_kwargs)
      self.data_kwargs = {"split": self.data}
    else:
      step_fn = functools.partial(train.train_step, **step_kwargs)
      self.data_kwargs = self.data
    step_fn = jax.jit(step_fn, donate_argnums=(0,))
    t0 = time.perf_counter()
    self.compiled = step_fn.lower(self.state, self.idxs[0], self.key,
                                  **self.data_kwargs).compile(
                                      compiler_options=compiler_options)
    self.compile_s = time.perf_counter() - t0
    self.cost = _cost(self.compiled)
    self.first_step_s = None

  def run(self, num_steps: int) -> float:
    """Runs ``num_steps`` steps; returns wall seconds (device-synchronised)."""
    jax.block_until_ready(self.state)
    t0 = time.perf_counter()
    for i in range(num_steps):
      self.state, metrics = self.compiled(
          self.state, self.idxs[i % len(self.idxs)], self.key,
          **self.data_kwargs)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - t0


class JaxEvalRunner:
  """``train.eval_step`` (region pooling) on centre-cropped uint8 batches."""

  framework = "jax"

  def __init__(self, config, batch: int, seed: int = 0):
    self.batch = batch
    model = rapool_net.build_model(config.model)
    self.variables = init_variables(model, config.data.crop_size, seed)
    images, masks, _, _ = synthetic_device_data(batch, config.data.crop_size,
                                                seed)
    self.args = (self.variables, images, masks)
    fn = jax.jit(functools.partial(
        train.eval_step, model=model, pooling="region",
        mean=tuple(config.data.mean), std=tuple(config.data.std)))
    t0 = time.perf_counter()
    self.compiled = fn.lower(*self.args).compile()
    self.compile_s = time.perf_counter() - t0
    self.cost = _cost(self.compiled)

  def run(self, num_steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(num_steps):
      out = self.compiled(*self.args)
    jax.block_until_ready(out)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------
# The torch side.


class TorchTrainRunner:
  """``torch_reference.TrainStep`` with the same sizes."""

  framework = "torch"

  def __init__(self, size: dict, stage_name: str, batch: int, amp: bool,
               compile_model: bool, seed: int = 0):
    import torch  # pylint: disable=g-import-not-at-top
    from rapool_jax import torch_reference as tr  # pylint: disable=g-import-not-at-top
    self.torch, self.tr = torch, tr
    torch.manual_seed(seed)
    self.device = tr.default_device()
    if self.device.type == "cuda":
      torch.backends.cudnn.benchmark = True
    self.batch = batch
    self.options = tr.StepOptions(amp=amp, channels_last=True,
                                  compile=compile_model, crop=size["crop"])
    model = tr.make_model(size["depth"], size["width"], dropout_rate=0.2,
                          device=self.device)
    images, masks, labels = tr.synthetic_data(batch, size["image_size"],
                                              device=self.device, seed=seed)
    self.step = tr.TrainStep(model, stage_name, images, masks, labels,
                             self.options, self.device)
    self.compile_s = None   # set by warm-up when torch.compile is on
    self.cost = {"gflop_per_step": None, "xla_mem_bytes": None}

  def run(self, num_steps: int) -> float:
    return self.tr.time_steps(self.step, self.batch, num_steps, self.batch)

  def device_peak(self):
    if self.device.type != "cuda":
      return None
    return self.torch.cuda.max_memory_allocated(self.device)

  def reset_device_peak(self):
    if self.device.type == "cuda":
      self.torch.cuda.reset_peak_memory_stats(self.device)


class TorchEvalRunner:
  framework = "torch"

  def __init__(self, size: dict, batch: int, amp: bool, seed: int = 0):
    import torch  # pylint: disable=g-import-not-at-top
    from rapool_jax import torch_reference as tr  # pylint: disable=g-import-not-at-top
    self.torch, self.tr = torch, tr
    self.device = tr.default_device()
    self.batch = batch
    self.options = tr.StepOptions(amp=amp, channels_last=True)
    self.model = tr.make_model(size["depth"], size["width"],
                               device=self.device)
    self.images, _, _ = tr.synthetic_data(batch, size["crop"],
                                          device=self.device, seed=seed)
    self.compile_s = None
    self.cost = {"gflop_per_step": None, "xla_mem_bytes": None}

  def run(self, num_steps: int) -> float:
    if self.device.type == "cuda":
      self.torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(num_steps):
      out = self.tr.eval_forward(self.model, self.images, self.options,
                                 self.device)
    out[0].cpu()
    return time.perf_counter() - t0

  def device_peak(self):
    if self.device.type != "cuda":
      return None
    return self.torch.cuda.max_memory_allocated(self.device)

  def reset_device_peak(self):
    if self.device.type == "cuda":
      self.torch.cuda.reset_peak_memory_stats(self.device)


# ----------------------------------------------------------------------------
# Timing, interleaved.


def time_interleaved(runners: list, steps: int, repeats: int, warmup: int,
                     trackers: list) -> list[list[float]]:
  """Warm-up, then ``repeats`` rounds timing each runner in turn.

  Interleaving puts both frameworks under the same background load (the CPU
  is shared). Returns per-runner lists of img/s, one value per round.
  """
  for runner, tracker in zip(runners, trackers):
    with tracker.phase():
      t = runner.run(warmup)
    if runner.framework == "torch" and runner.compile_s is None and getattr(
        runner, "options", None) is not None and runner.options.compile:
      runner.compile_s = t   # first call traces and compiles
    runner.first_call_s = t
  rates = [[] for _ in runners]
  for _ in range(repeats):
    for i, (runner, tracker) in enumerate(zip(runners, trackers)):
      with tracker.phase():
        seconds = runner.run(steps)
      rates[i].append(runner.batch * steps / seconds)
  return rates


def _entry(runner, rates, *, step, batch, image_size, dtype, tracker,
           extra=None) -> dict[str, Any]:
  entry = {
      "framework": runner.framework, "step": step, "batch": batch,
      "image_size": image_size, "dtype": dtype,
      "img_per_s": statistics.median(rates),
      "img_per_s_repeats": rates,
      "compile_s": runner.compile_s,
      "first_call_s": getattr(runner, "first_call_s", None),
      "peak_mem_bytes": tracker.peak, "peak_mem_kind": tracker.kind,
      **runner.cost,
  }
  if entry["gflop_per_step"]:
    entry["achieved_tflop_per_s"] = (entry["gflop_per_step"] * entry["img_per_s"]
                                     / batch / 1e3)
  entry.update(extra or {})
  return entry


# ----------------------------------------------------------------------------
# Segmentation upsampling: subpixel vs zero-stuffed transposed conv.


def conv_transpose_zero_stuffed(x, kernel, stride: int):
  """torch ``ConvTranspose2d(k=2s, stride=s, padding=s//2)`` via
  ``lax.conv_transpose``: ``[B, h, w, Cin]`` -> ``[B, s*h, s*w, Cout]``.

  XLA lowers it as a conv over an ``s``-dilated (zero-stuffed) input.
  """
  k = kernel.shape[0]
  pad = k - 1 - stride // 2
  # transpose_kernel flips the taps and reads the kernel as the forward conv's
  # (output channels of the transposed conv on the I axis): swap I and O.
  return jax.lax.conv_transpose(
      x, jnp.swapaxes(kernel, 2, 3).astype(x.dtype), (stride, stride),
      ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      transpose_kernel=True)


@contextlib.contextmanager
def _patched(module, name, value):
  old = getattr(module, name)
  setattr(module, name, value)
  try:
    yield
  finally:
    setattr(module, name, old)


def upsample_flops(batch: int, crop: int, stride: int = 32) -> dict[str, Any]:
  """FLOPs (``cost_analysis``) of the upsampling alone, forward and
  forward+backward, subpixel vs ``lax.conv_transpose``."""
  h = crop // stride
  x = jnp.zeros((batch, h, h, 2), jnp.float32)
  kernel = jnp.asarray(rapool_net.bilinear_kernel(stride, 2))
  out = {}
  impls = {"subpixel": rapool_net.transposed_conv_as_subpixel,
           "conv_transpose": conv_transpose_zero_stuffed}
  for name, fn in impls.items():
    fwd = jax.jit(lambda x, k, fn=fn: fn(x, k, stride))
    grad = jax.jit(jax.grad(
        lambda x, k, fn=fn: jnp.sum(fn(x, k, stride)**2), argnums=(0, 1)))
    out[name] = {
        "forward_gflop": _cost(fwd.lower(x, kernel).compile())["gflop_per_step"],
        "forward_backward_gflop": _cost(
            grad.lower(x, kernel).compile())["gflop_per_step"],
    }
  # The two must agree (and match torch's ConvTranspose2d, tested elsewhere).
  rng = np.random.default_rng(0)
  xr = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))
  kr = jnp.asarray(rng.normal(size=kernel.shape).astype(np.float32))
  diff = jnp.max(jnp.abs(impls["subpixel"](xr, kr, stride)
                         - impls["conv_transpose"](xr, kr, stride)))
  out["max_abs_diff"] = float(diff)
  out["batch"], out["input_hw"], out["stride"] = batch, h, stride
  return out


def _zero_segmentation_loss(seg_logits, masks, has_mask=None):
  del seg_logits, masks, has_mask
  return jnp.zeros((), jnp.float32)


def joint_step_variants(config, batch: int, steps: int, repeats: int,
                        warmup: int, log=print) -> dict[str, Any]:
  """Joint step three ways: as the project builds it (subpixel upsampling),
  with the seg loss removed (so XLA drops the upsampling and pixel CE), and
  with a zero-stuffed ``lax.conv_transpose``. FLOPs, compile and img/s."""
  variants = {
      "project": (),
      "no_seg_loss": ((losses, "segmentation_loss", _zero_segmentation_loss),),
      "conv_transpose": ((rapool_net, "transposed_conv_as_subpixel",
                          conv_transpose_zero_stuffed),),
  }
  runners = {}
  for name, patches in variants.items():
    with contextlib.ExitStack() as stack:
      for module, attr, value in patches:
        stack.enter_context(_patched(module, attr, value))
      runners[name] = JaxTrainRunner(config, "joint", batch)
    log(f"  joint[{name}]: compiled in {runners[name].compile_s:.1f} s, "
        f"{runners[name].cost['gflop_per_step']:.1f} GFLOP/step")
  trackers = [_PeakTracker(_jax_device_peak) for _ in runners]
  rates = time_interleaved(list(runners.values()), steps, repeats, warmup,
                           trackers)
  out = {}
  for (name, runner), r in zip(runners.items(), rates):
    out[name] = {"img_per_s": statistics.median(r), "img_per_s_repeats": r,
                 "compile_s": runner.compile_s, **runner.cost}
  base = out["project"]
  for name in ("no_seg_loss", "conv_transpose"):
    v = out[name]
    if base["gflop_per_step"] and v["gflop_per_step"]:
      v["gflop_vs_project"] = v["gflop_per_step"] / base["gflop_per_step"]
    v["time_vs_project"] = base["img_per_s"] / v["img_per_s"]
  nos = out["no_seg_loss"]
  out["seg_loss_time_share"] = 1 - base["img_per_s"] / nos["img_per_s"]
  if base["gflop_per_step"] and nos["gflop_per_step"]:
    out["seg_loss_flop_share"] = 1 - nos["gflop_per_step"] / base["gflop_per_step"]
  out["batch"] = batch
  del runners
  gc.collect()
  return out


# ----------------------------------------------------------------------------
# Main.


def device_info() -> dict[str, Any]:
  d = jax.devices()[0]
  info = {"platform": d.platform, "device_kind": d.device_kind,
          "num_devices": jax.device_count(), "cpu_count": os.cpu_count(),
          "cpu_model": _cpu_model(), "python": platform.python_version(),
          "jax_version": jax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
    info["jaxlib_version"] = jaxlib.__version__
  except ImportError:
    pass
  return info


def _cpu_model() -> str | None:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or None


def torch_available() -> tuple[bool, str]:
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    return False, f"torch is not importable ({e})"
  return True, ""


def run(size_name: str, *, steps: int | None = None,
        repeats: int | None = None, dtype: str | None = None,
        batches=None, kinds=STEP_KINDS, with_torch: bool = True,
        torch_compile: str = "auto", analysis: bool = True,
        log=print) -> dict[str, Any]:
  """Runs the benchmark; returns the JSON-able result."""
  size = dict(SIZES[size_name])
  if steps:
    size["steps"] = steps
  if repeats:
    size["repeats"] = repeats
  if batches:
    size["batches"] = tuple(batches)
  dtype = dtype or size["dtype"]
  config = make_config(size, dtype)
  torch_info = None
  if with_torch:
    ok, why = torch_available()
    if not ok:
      log(f"torch reference skipped: {why}")
      with_torch = False
      torch_info = {"skipped": why}
  compile_torch = False
  if with_torch:
    from rapool_jax import torch_reference as tr  # pylint: disable=g-import-not-at-top
    compile_torch = {"on": True, "off": False}.get(
        torch_compile, tr.default_device().type == "cuda")
    torch_info = {**tr.runtime_info(), "compile": compile_torch,
                  "amp_bf16": dtype == "bfloat16", "channels_last": True}

  info = device_info()
  log(f"device: {info['platform']} {info['device_kind']} "
      f"({info['cpu_count']} CPU cores); size '{size_name}': ResNet-"
      f"{size['depth']} x{size['width']} at {size['crop']} px (from "
      f"{size['image_size']}), {dtype}, batches {size['batches']}, "
      f"{size['repeats']} x {size['steps']} steps after {size['warmup']} "
      f"warm-up")
  result = {"device": info, "size": size_name, "size_config": size,
            "torch": torch_info, "results": []}
  amp = dtype == "bfloat16"

  def add_row(make_jax, make_torch, step, batch, image_size):
    runners, trackers = [make_jax()], [_PeakTracker(_jax_device_peak)]
    if with_torch:
      t = make_torch()
      runners.append(t)
      trackers.append(_PeakTracker(t.device_peak))
      t.reset_device_peak()
    rates = time_interleaved(runners, size["steps"], size["repeats"],
                             size["warmup"], trackers)
    for runner, r, tracker in zip(runners, rates, trackers):
      extra = {}
      if runner.framework == "torch":
        extra["torch_compile"] = _compiled_ok(runner)
        error = getattr(getattr(runner, "step", None), "compile_error", None)
        if error:
          extra["torch_compile_error"] = error
      e = _entry(runner, r, step=step, batch=batch, image_size=image_size,
                 dtype=dtype, tracker=tracker, extra=extra)
      result["results"].append(e)
    log(format_row(result["results"][-len(runners):]))
    del runners
    gc.collect()

  log(HEADER)
  for batch in size["batches"]:
    for kind in kinds:
      add_row(lambda: JaxTrainRunner(config, kind, batch),
              lambda: TorchTrainRunner(size, kind, batch, amp, compile_torch),
              kind, batch, size["crop"])
  eb = size["eval_batch"]
  add_row(lambda: JaxEvalRunner(config, eb),
          lambda: TorchEvalRunner(size, eb, amp), "eval", eb, size["crop"])

  if analysis:
    log("segmentation upsampling:")
    up = upsample_flops(size["batches"][0], size["crop"])
    log(f"  upsampling alone, batch {up['batch']}: subpixel "
        f"{up['subpixel']['forward_backward_gflop']:.3f} GFLOP fwd+bwd vs "
        f"conv_transpose {up['conv_transpose']['forward_backward_gflop']:.3f}"
        f" (max |diff| {up['max_abs_diff']:.1e})")
    joint = joint_step_variants(config, size["batches"][0], size["steps"],
                                size["repeats"], size["warmup"], log=log)
    log(f"  joint step: seg loss + upsampling = "
        f"{100 * joint['seg_loss_time_share']:.1f}% of the time, "
        f"{100 * joint.get('seg_loss_flop_share', float('nan')):.1f}% of the "
        f"FLOPs; zero-stuffed conv_transpose costs "
        f"{joint['conv_transpose'].get('gflop_vs_project', float('nan')):.2f}x"
        f" the FLOPs, {joint['conv_transpose']['time_vs_project']:.2f}x the "
        f"time")
    result["analysis"] = {"upsample_alone": up, "joint_step_variants": joint}
  return result


def _compiled_ok(runner) -> bool:
  step = getattr(runner, "step", None)
  return bool(runner.options.compile and step is not None
              and step.compile_error is None)


HEADER = (f"{'step':<15}{'batch':>6}{'dtype':>10}{'jax img/s':>11}"
          f"{'torch img/s':>13}{'jax/torch':>11}{'jax compile s':>15}"
          f"{'jax GFLOP/img':>15}{'jax peak MB':>13}{'torch peak MB':>15}")


def format_row(entries: list[dict]) -> str:
  j = next(e for e in entries if e["framework"] == "jax")
  t = next((e for e in entries if e["framework"] == "torch"), None)
  mb = lambda v: f"{v / 2**20:.0f}" if v else "-"
  flop = (f"{j['gflop_per_step'] / j['batch']:.1f}" if j["gflop_per_step"]
          else "-")
  return (f"{j['step']:<15}{j['batch']:>6}{j['dtype']:>10}"
          f"{j['img_per_s']:>11.2f}"
          f"{(t['img_per_s'] if t else float('nan')):>13.2f}"
          f"{(j['img_per_s'] / t['img_per_s'] if t else float('nan')):>11.2f}"
          f"{j['compile_s']:>15.1f}{flop:>15}"
          f"{mb(j['peak_mem_bytes']):>13}"
          f"{mb(t['peak_mem_bytes']) if t else '-':>15}")


def format_table(result: dict) -> str:
  rows, by_key = [HEADER], {}
  for e in result["results"]:
    by_key.setdefault((e["step"], e["batch"]), []).append(e)
  for entries in by_key.values():
    rows.append(format_row(entries))
  return "\n".join(rows)


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="JSON file to write")
  parser.add_argument("--device-size", default="auto",
                      choices=("auto", "small", "full", "tiny"),
                      help="auto: full on GPU/TPU, small on CPU")
  parser.add_argument("--steps", type=int, default=None,
                      help="steps per timed block (default per size)")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed blocks, median reported (default per size)")
  parser.add_argument("--dtype", default=None,
                      choices=("float32", "bfloat16"),
                      help="compute dtype (default: bfloat16 full, float32 "
                           "small); torch uses bf16 autocast for bfloat16")
  parser.add_argument("--batches", type=int, nargs="+", default=None)
  parser.add_argument("--steps-kinds", nargs="+", default=list(STEP_KINDS),
                      choices=STEP_KINDS, dest="kinds")
  parser.add_argument("--torch-compile", default="auto",
                      choices=("auto", "on", "off"),
                      help="torch.compile the reference (auto: on for CUDA)")
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--no-analysis", action="store_true",
                      help="skip the upsampling / seg-loss analysis")
  parser.add_argument("--xla-flags", default="recommended",
                      choices=("recommended", "none"),
                      help="recommended: add cpu_xla_flags() to XLA_FLAGS")
  args = parser.parse_args(argv)

  if args.xla_flags == "recommended":
    apply_xla_flags(cpu_xla_flags())
  # Both frameworks share the accelerator: JAX must not grab 75% of it upfront.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  size = args.device_size
  if size == "auto":
    size = "small" if jax.devices()[0].platform == "cpu" else "full"
  result = run(size, steps=args.steps, repeats=args.repeats, dtype=args.dtype,
               batches=args.batches, kinds=tuple(args.kinds),
               with_torch=not args.no_torch, torch_compile=args.torch_compile,
               analysis=not args.no_analysis)
  result["command"] = " ".join(["python -m rapool_jax.benchmark"]
                               + list(argv if argv is not None
                                      else sys.argv[1:]))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(format_table(result))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
