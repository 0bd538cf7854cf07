"""Train-step throughput of the project's JAX step vs the PyTorch reference.

    python -m benchmarks.benchmark --out benchmarks/results/cpu_2core.json \
        [--device-size auto|small|full|tiny] [--steps N] [--repeats R]

For each step kind of the paper (``classification``: GAP; ``segmentation``:
only the seg conv trains; ``joint``: region pooling + lambda * pixel CE) and
each batch size, times the project's own step (``train.resident_train_step``:
data as uint8 on the device, batch gathered and augmented inside jit; jitted
with donated state; optimizer from ``optim.make_optimizer``; the config is
``configs/isic2017.py``'s at the benchmark's size) and, in the same process
and interleaved block by block, the same step in
``benchmarks.torch_reference``. Also times
inference (``evaluate.eval_step``) and analyses the segmentation upsampling
(subpixel vs ``lax.conv_transpose``; share of the joint step).

Sizes (``--device-size``): ``full`` (the default on GPU/TPU) is ResNet-50 at
224 px in bfloat16 at the paper's batch 10 and at batch 256; ``small`` (the
default on CPU) is ResNet-50 at 224 px in float32 at batch 8, a few steps;
``tiny`` is for tests. Timing: compile, warm up, then ``repeats`` blocks of
``steps`` steps per framework, alternating, each synchronised
(``jax.block_until_ready``, ``torch.cuda.synchronize``); img/s is the median
over blocks. Each block also records the CPU share other processes took
meanwhile: on a shared machine, ``img_per_s_quiet`` (median over blocks where
others used < 10%) is the figure to compare.

On CPU the JAX steps are compiled with ``cpu_compiler_options()`` (Eigen
instead of YNNPACK convolutions); ``cpu_xla_flags()`` is the same choice as
an ``XLA_FLAGS`` entry for the training entry point (``apply_xla_flags``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import glob
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from launch import common
from rapool_jax import evaluate
from rapool_jax import losses
from rapool_jax import optim
from rapool_jax import sharding
from rapool_jax import train
from rapool_jax.data import pipeline
from rapool_jax.models import rapool_net

STEP_KINDS = ("classification", "segmentation", "joint")

# Benchmark sizes. "steps" per timed block, "repeats" blocks, "warmup" steps.
SIZES = {
    "full": dict(depth="50", width=1.0, image_size=256, crop=224,
                 batches=(10, 256), eval_batch=256, dtype="bfloat16",
                 steps=20, repeats=5, warmup=3, min_images_per_block=2000),
    "small": dict(depth="50", width=1.0, image_size=256, crop=224,
                  batches=(8,), eval_batch=8, dtype="float32",
                  steps=1, repeats=5, warmup=1),
    "tiny": dict(depth="tiny", width=0.125, image_size=72, crop=64,
                 batches=(4,), eval_batch=4, dtype="float32",
                 steps=1, repeats=1, warmup=1),
}


from rapool_jax.xla_flags import (  # noqa: E402,F401  re-exported
    apply_xla_flags, cpu_compiler_options, cpu_xla_flags, merge_xla_flags)


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


def _proc_line(path: str, prefix: str) -> str | None:
  """The first line of a /proc file that starts with ``prefix``; None where
  there is no such line or file (not Linux)."""
  try:
    with open(path) as f:
      return next((line for line in f if line.startswith(prefix)), None)
  except OSError:
    return None


def _rss_peak_bytes() -> int | None:
  line = _proc_line("/proc/self/status", "VmHWM:")
  if line:
    return int(line.split()[1]) * 1024
  try:
    import resource  # pylint: disable=g-import-not-at-top
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  except ImportError:
    return None


def _system_busy_s() -> float | None:
  """CPU seconds all processes have spent so far (Linux ``/proc/stat``)."""
  try:
    with open("/proc/stat") as f:
      v = [int(x) for x in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  # user nice system irq softirq steal
  return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


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


def make_config(size: dict, dtype: str,
                spec: str = "configs/isic2017.py:paper"):
  """The config the paper's protocol runs (``spec``) at benchmark size: its
  stages, optimizer, augmentation and model, with the size's depth, width,
  image and crop sizes and ``dtype``."""
  c = common.load_config(spec)
  c.data.image_size = size["image_size"]
  c.data.crop_size = size["crop"]
  c.model.depth = size["depth"]
  c.model.width = size["width"]
  c.model.dtype = dtype
  c.model.num_classes = pipeline.num_classes(c.data.task)
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
def _init_fn(model, crop: int):
  fn = jax.jit(lambda key, x: model.init({"params": key}, x, train=False))
  # Runs once: LLVM -O0 compiles it ~7x faster (1 s instead of 9 on 2 cores).
  return fn.lower(jax.random.key(0), jnp.zeros((1, crop, crop, 3))).compile(
      compiler_options={"xla_backend_optimization_level": 0})


def init_variables(model, crop: int, seed: int = 0):
  """Random ``{"params", "batch_stats"}`` (weights do not change the timing)."""
  variables = _init_fn(model, crop)(jax.random.key(seed),
                                    jnp.zeros((1, crop, crop, 3), jnp.float32))
  return {"params": variables["params"],
          "batch_stats": variables["batch_stats"]}


def traced(fn: Callable[[], Any]) -> tuple[Any, bytes]:
  """``fn()`` under ``jax.profiler.trace``: its result and the serialised
  XSpace (``jax.profiler.ProfileData.from_serialized_xspace`` reads it)."""
  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir):
      out = fn()
    (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"),
                        recursive=True)
    with open(path, "rb") as f:
      return out, f.read()


def _cost_on_cpu_client(lowered) -> dict[str, float] | None:
  """XLA's cost analysis of ``lowered``'s HLO, run by the CPU client.

  ``Lowered.cost_analysis`` is unimplemented for PJRT plugin backends (the
  CUDA plugin: every H200 row of 2026-11-27 read None). The lowered HLO is
  backend-independent up to ``platform_dependent`` branches already chosen,
  so the CPU client counts the GPU program. jaxlib offers this only
  privately; None where it moved.
  """
  try:
    from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
    from jax.extend import backend as jex_backend  # pylint: disable=g-import-not-at-top,line-too-long
    return _jax.hlo_module_cost_analysis(
        jex_backend.get_backend("cpu"),
        lowered.compiler_ir("hlo").as_hlo_module())
  except Exception:  # pylint: disable=broad-except
    return None


def _cost(lowered, compiled) -> dict[str, Any]:
  """FLOPs of a lowered computation and XLA memory of its executable (None
  where unreported).

  FLOPs are counted on the lowered, backend-independent program: on GPU the
  optimised HLO hands convolutions to cuDNN custom calls, which XLA's cost
  analysis does not count (ResNet-50's 24 GFLOP/img train step reads as 0.6).
  """
  out = {"gflop_per_step": None, "xla_mem_bytes": None}
  try:
    cost = lowered.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    if not cost:
      cost = _cost_on_cpu_client(lowered)
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


def train_step_program(config, stage_name: str, batch: int, seed: int = 0,
                       key_impl: str = "threefry2x32"):
  """The project's train step for one stage and its arguments.

  Returns ``(step, state, idxs, key, split)``: ``step`` is
  ``train.resident_train_step`` with the stage bound (model and optimizer
  ride in the ``train.TrainState``),
  called as ``step(state, idxs[i], key, split)`` once compiled by
  ``lower_train_step``; ``split`` is a synthetic uint8 split of ``batch``
  examples, ``idxs`` four permutations of it.
  """
  model = rapool_net.build_model(config.model, config.systems)
  stage = config.stages[stage_name]
  variables = init_variables(model, config.data.crop_size, seed)
  tx = optim.make_optimizer(config.optimizer, stage, variables["params"])
  state = train.TrainState.create(
      apply_fn=model.apply, params=variables["params"],
      batch_stats=variables["batch_stats"], tx=tx).replace(
          step=jnp.zeros((), jnp.int32))
  images, masks, labels, has_mask = synthetic_device_data(
      batch, config.data.image_size, seed)
  split = dict(images=images, masks=masks, labels=labels, has_mask=has_mask)
  rng = np.random.default_rng(seed)
  idxs = [jnp.asarray(rng.permutation(batch).astype(np.int32))
          for _ in range(4)]
  step = functools.partial(
      train.resident_train_step, stage=stage,
      data=config.data, mean=tuple(config.data.mean),
      std=tuple(config.data.std))
  return step, state, idxs, jax.random.key(seed, impl=key_impl), split


def lower_train_step(config, step, state, args: tuple, state_sharding=None):
  """``sharding.lower_train_step`` as the project's training runs it: the state
  donated and laid out as ``config.systems`` says, on one device unless
  ``state_sharding`` says otherwise."""
  if state_sharding is None:
    state_sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return sharding.lower_train_step(
      step, state, args, state_sharding, layout=config.systems.state_layout,
      donate=config.systems.donate_state)


class JaxTrainRunner:
  """The project's train step for one stage: compiled ahead, state donated."""

  framework = "jax"

  def __init__(self, config, stage_name: str, batch: int, seed: int = 0,
               compiler_options: dict[str, Any] | None = None,
               key_impl: str = "threefry2x32"):
    self.batch = batch
    step, state, self.idxs, self.key, self.data = train_step_program(
        config, stage_name, batch, seed, key_impl)
    # The training path for a split held on the device: gather + step.
    t0 = time.perf_counter()
    lowered = lower_train_step(config, step, state,
                               (self.idxs[0], self.key, self.data))
    self.compiled = lowered.compile(compiler_options=compiler_options)
    self.compile_s = time.perf_counter() - t0
    self.state = sharding.place_state(self.compiled, state)
    self.cost = _cost(lowered, self.compiled)
    self.first_step_s = None

  def run(self, num_steps: int) -> float:
    """Runs ``num_steps`` steps; returns wall seconds (device-synchronised)."""
    jax.block_until_ready(self.state)
    t0 = time.perf_counter()
    for i in range(num_steps):
      self.state, metrics = self.compiled(
          self.state, self.idxs[i % len(self.idxs)], self.key, self.data)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - t0


class JaxEvalRunner:
  """``evaluate.eval_step`` (region pooling) on centre-cropped uint8 batches."""

  framework = "jax"

  def __init__(self, config, batch: int, seed: int = 0,
               compiler_options: dict[str, Any] | None = None):
    self.batch = batch
    model = rapool_net.build_model(config.model, config.systems)
    self.variables = init_variables(model, config.data.crop_size, seed)
    images, masks, _, _ = synthetic_device_data(batch, config.data.crop_size,
                                                seed)
    self.args = (self.variables, images, masks)
    fn = jax.jit(functools.partial(
        evaluate.eval_step, model=model, pooling="region",
        mean=tuple(config.data.mean), std=tuple(config.data.std)))
    t0 = time.perf_counter()
    lowered = fn.lower(*self.args)
    self.compiled = lowered.compile(compiler_options=compiler_options)
    self.compile_s = time.perf_counter() - t0
    self.cost = _cost(lowered, self.compiled)

  def run(self, num_steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(num_steps):
      out = self.compiled(*self.args)
    jax.block_until_ready(out)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------
# The torch side.


class _TorchDevicePeak:
  """Peak device memory of a torch runner (``self.torch``, ``self.device``);
  None off CUDA, where the process's peak RSS is read instead."""

  def device_peak(self):
    if self.device.type != "cuda":
      return None
    return self.torch.cuda.max_memory_allocated(self.device)

  def reset_device_peak(self):
    if self.device.type == "cuda":
      self.torch.cuda.reset_peak_memory_stats(self.device)


class TorchTrainRunner(_TorchDevicePeak):
  """``torch_reference.TrainStep`` with the same sizes."""

  framework = "torch"

  def __init__(self, size: dict, stage_name: str, batch: int, amp: bool,
               compile_model: bool, seed: int = 0):
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_reference as tr  # pylint: disable=g-import-not-at-top,line-too-long
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


class TorchEvalRunner(_TorchDevicePeak):
  framework = "torch"

  def __init__(self, size: dict, batch: int, amp: bool,
               compile_model: bool = False, seed: int = 0):
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_reference as tr  # pylint: disable=g-import-not-at-top,line-too-long
    self.torch, self.tr = torch, tr
    self.device = tr.default_device()
    self.batch = batch
    self.options = tr.StepOptions(amp=amp, channels_last=True,
                                  compile=compile_model)
    self.model = tr.make_model(size["depth"], size["width"],
                               device=self.device)
    self.eager_model, self.compile_error = self.model, None
    self.compile_pending = False
    if compile_model:
      compiled = tr.compile_model(self.model)
      if isinstance(compiled, str):
        self.compile_error = compiled
      else:
        self.model, self.compile_pending = compiled, True
    self.images, _, _ = tr.synthetic_data(batch, size["crop"],
                                          device=self.device, seed=seed)
    self.compile_s = None
    self.cost = {"gflop_per_step": None, "xla_mem_bytes": None}

  def run(self, num_steps: int) -> float:
    if self.compile_pending:
      # torch.compile fails lazily, at the first call: fall back to eager.
      self.compile_pending = False
      try:
        self.tr.eval_forward(self.model, self.images, self.options,
                             self.device)
      except Exception as e:  # pylint: disable=broad-except
        self.compile_error = f"{type(e).__name__}: {str(e)[:300]}"
        self.model = self.eager_model
    if self.device.type == "cuda":
      self.torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(num_steps):
      out = self.tr.eval_forward(self.model, self.images, self.options,
                                 self.device)
    out[0].cpu()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------
# Timing, interleaved.


# A block counts as quiet when other processes used < 10% of the CPUs.
QUIET_OTHER_CPU = 0.10


def time_interleaved(runners: list, steps: int, repeats: int, warmup: int,
                     trackers: list) -> list[list[tuple[float, float | None]]]:
  """Warm-up, then ``repeats`` rounds timing each runner in turn.

  Interleaving puts both frameworks under the same background load (the CPU
  may be shared); the order alternates between rounds. Each block also
  records the share of all CPUs that *other* processes used meanwhile, so
  that blocks disturbed by other jobs can be told apart. Returns, per runner,
  ``(img/s, other_cpu_frac or None)`` per round.
  """
  for runner, tracker in zip(runners, trackers):
    with tracker.phase():
      t = runner.run(warmup)
    runner.first_call_s = t
    opts = getattr(runner, "options", None)
    if runner.framework == "torch" and opts is not None and opts.compile:
      runner.compile_s = t   # the first call traces and compiles
  ncpu = os.cpu_count() or 1
  out = [[] for _ in runners]
  for r in range(repeats):
    order = list(enumerate(zip(runners, trackers)))
    for i, (runner, tracker) in (order if r % 2 == 0 else order[::-1]):
      busy0, own0 = _system_busy_s(), time.process_time()
      with tracker.phase():
        seconds = runner.run(steps)
      busy1, own1 = _system_busy_s(), time.process_time()
      other = None
      if busy0 is not None and busy1 is not None:
        other = max(0.0, ((busy1 - busy0) - (own1 - own0)) / (seconds * ncpu))
      out[i].append((runner.batch * steps / seconds, other))
  return out


def _summary(blocks) -> dict[str, Any]:
  rates = [r for r, _ in blocks]
  quiet = [r for r, o in blocks if o is not None and o < QUIET_OTHER_CPU]
  return {"img_per_s": statistics.median(rates),
          "img_per_s_best": max(rates),
          "img_per_s_quiet": statistics.median(quiet) if quiet else None,
          "num_quiet_blocks": len(quiet),
          "img_per_s_repeats": [round(r, 3) for r in rates],
          "other_cpu_frac": [None if o is None else round(o, 3)
                             for _, o in blocks]}


def _entry(runner, blocks, *, step, batch, image_size, dtype, tracker,
           extra=None) -> dict[str, Any]:
  entry = {
      "framework": runner.framework, "step": step, "batch": batch,
      "image_size": image_size, "dtype": dtype,
      **_summary(blocks),
      "compile_s": runner.compile_s,
      "first_call_s": getattr(runner, "first_call_s", None),
      "peak_mem_bytes": tracker.peak, "peak_mem_kind": tracker.kind,
      **runner.cost,
  }
  if entry["gflop_per_step"]:
    entry["achieved_tflop_per_s"] = (
        entry["gflop_per_step"] * entry["img_per_s"] / batch / 1e3)
  entry.update(extra or {})
  return entry


# ----------------------------------------------------------------------------
# Segmentation upsampling: subpixel vs zero-stuffed transposed conv.


def conv_transpose_zero_stuffed(x, kernel, stride: int):
  """torch ``ConvTranspose2d(k=2s, stride=s, padding=s//2)`` via
  ``lax.conv_transpose``: ``[B, h, w, Cin]`` -> ``[B, s*h, s*w, Cout]``.

  As written, a conv over an ``s``-dilated (zero-stuffed) input; what XLA
  makes of it is what ``upsample_analysis`` reports.
  """
  k = kernel.shape[0]
  pad = k - 1 - stride // 2
  # transpose_kernel flips the taps and reads the kernel as the forward conv's
  # (output channels of the transposed conv on the I axis): swap I and O.
  return jax.lax.conv_transpose(
      x, jnp.swapaxes(kernel, 2, 3).astype(x.dtype), (stride, stride),
      ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      transpose_kernel=True)


def subpixel_as_dot(x, kernel, stride: int):
  """``transposed_conv_as_subpixel`` with its 3x3 conv as one matmul.

  The conv has only ``9 * Cin`` = 18 inputs per output position, a shape
  convolution libraries may serve poorly; as ``[B*h*w, 18] @ [18, s*s*Cout]``
  over explicit 3x3 patches it is an ordinary GEMM.
  """
  w3 = rapool_net.subpixel_phase_kernel(kernel, stride)
  _, h, w, cin = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # Patch features in (dy, dx, cin) order, as w3's reshape below.
  patches = jnp.concatenate([xp[:, dy:dy + h, dx:dx + w]
                             for dy in range(3) for dx in range(3)], axis=-1)
  y = patches @ w3.reshape(9 * cin, -1).astype(x.dtype)
  return rapool_net.depth_to_space(y, stride)


UPSAMPLE_IMPLS = {"subpixel": rapool_net.transposed_conv_as_subpixel,
                  "conv_transpose": conv_transpose_zero_stuffed,
                  "subpixel_dot": subpixel_as_dot}


@contextlib.contextmanager
def _patched(module, name, value):
  old = getattr(module, name)
  setattr(module, name, value)
  try:
    yield
  finally:
    setattr(module, name, old)


def conv_ops(hlo_text: str) -> list[str]:
  """The convolutions of optimised HLO text: ``shape window dim_labels``,
  plus `` target`` where the backend made one a library call (cuDNN on GPU).
  """
  ops = []
  for line in hlo_text.splitlines():
    m = re.search(r"= (\S+) convolution\(.*?(window=\{[^}]*\}).*?"
                  r"(dim_labels=\S+?),", line)
    if m:
      ops.append(" ".join(m.groups()))
      continue
    m = re.search(r"= \(?(\S+?),? .*custom-call\(.*?(window=\{[^}]*\}).*?"
                  r"(dim_labels=\S+?),.*custom_call_target=\"([^\"]*conv[^\"]*)\"",
                  line)
    if m:
      ops.append(" ".join(m.groups()))
  return ops


def _best_time(fn, *args, repeats: int = 5) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return min(times)


def upsample_analysis(batch: int, crop: int, stride: int = 32,
                      compiler_options=None) -> dict[str, Any]:
  """The 2-channel stride-``s`` upsampling alone, each of ``UPSAMPLE_IMPLS``.

  Per implementation: XLA's FLOP count (``cost_analysis``; it counts only
  taps that hit real input, so it hides zero-stuffing), the convolutions of
  the optimised HLO, and the best time of forward and forward+backward.
  ``dense_zero_stuffed_gflop`` is what a conv over the dilated input costs.
  """
  h = crop // stride
  k = 2 * stride
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, h, h, 2)).astype(np.float32))
  kernel = jnp.asarray(rng.normal(size=(k, k, 2, 2)).astype(np.float32))
  out = {"batch": batch, "input_hw": h, "stride": stride, "kernel": k,
         "dense_zero_stuffed_gflop": 2 * batch * crop * crop * k * k * 2 * 2
                                     / 1e9}
  results = {}
  for name, fn in UPSAMPLE_IMPLS.items():
    fwd = jax.jit(lambda x, w, fn=fn: fn(x, w, stride))
    grad = jax.jit(jax.grad(lambda x, w, fn=fn: jnp.sum(fn(x, w, stride)**2),
                            argnums=(0, 1)))
    fwd_l, grad_l = fwd.lower(x, kernel), grad.lower(x, kernel)
    fwd_c = fwd_l.compile(compiler_options=compiler_options)
    grad_c = grad_l.compile(compiler_options=compiler_options)
    results[name] = fwd_c(x, kernel)
    out[name] = {
        "forward_gflop": _cost(fwd_l, fwd_c)["gflop_per_step"],
        "forward_backward_gflop": _cost(grad_l, grad_c)["gflop_per_step"],
        "forward_hlo_convolutions": conv_ops(fwd_c.as_text()),
        "forward_backward_hlo_convolutions": conv_ops(grad_c.as_text()),
        "forward_ms": 1e3 * _best_time(fwd_c, x, kernel),
        "forward_backward_ms": 1e3 * _best_time(grad_c, x, kernel),
    }
  for name in UPSAMPLE_IMPLS:
    out[name]["max_abs_diff_vs_subpixel"] = float(jnp.max(jnp.abs(
        results[name] - results["subpixel"])))
  return out


def input_pipeline_throughput(config, batch: int, steps: int,
                              num_examples: int | None = None,
                              log=print) -> dict[str, Any]:
  """img/s of the trainer's two input paths alone, without the network.

  ``device_augment``: a split held on the devices as uint8, the batch
  gathered, cropped, rotated, flipped and normalised inside jit (what the
  resident train step runs before the network). ``host_stream``: uint8
  batches gathered on the host by grain and copied to the devices
  (``sharding.stream_host_batches``; augmentation then runs in the step).
  """
  mesh = sharding.make_mesh()
  n = num_examples or 4 * batch
  rng = np.random.default_rng(0)
  s = config.data.image_size
  host = {"images": rng.integers(0, 256, (n, s, s, 3), np.uint8),
          "masks": rng.integers(0, 2, (n, s, s), np.uint8),
          "labels": rng.integers(0, 2, (n,)).astype(np.int32),
          "has_mask": np.ones((n,), bool)}
  indices = lambda t: pipeline.batch_indices(0, 0, t, batch, n)  # noqa: E731
  device_rate = _device_augment_rate(config.data, host, indices, batch, steps,
                                     mesh)
  result = {"batch": batch, "num_examples": n, "steps": steps,
            "device_augment_img_per_s": device_rate,
            "host_stream_img_per_s": None}
  try:
    import grain  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    # A leased accelerator may lack grain: keep the on-device figure.
    result["host_stream_skipped"] = f"grain is not importable: {e}"
    log(f"input pipeline alone (batch {batch}): on-device augmentation "
        f"{device_rate:.0f} img/s; host stream skipped ({e})")
    return result
  result["host_stream_img_per_s"] = _host_stream_rate(host, indices, batch,
                                                      steps, mesh)
  log(f"input pipeline alone (batch {batch}): on-device augmentation "
      f"{device_rate:.0f} img/s, host stream (grain + copy) "
      f"{result['host_stream_img_per_s']:.0f} img/s")
  return result


def _device_augment_rate(data, host, indices, batch, steps, mesh) -> float:
  """Returns the img/s of ``steps`` batches gathered and augmented in jit
  from ``host`` held on the devices."""

  @jax.jit
  def device_input(split, idx, key):
    # What resident_train_step runs before the network.
    batch = train.resident_batch(split, idx)
    return train.augmented_inputs(jax.random.fold_in(key, idx[0]), batch, data,
                                  tuple(data.mean), tuple(data.std))

  split = sharding.put_replicated(host, mesh)
  key = jax.random.key(0)
  idxs = [sharding.put_global_batch(indices(t), mesh) for t in range(steps)]
  jax.block_until_ready(device_input(split, idxs[0], key))
  t0 = time.perf_counter()
  for idx in idxs:
    out = device_input(split, idx, key)
  jax.block_until_ready(out)
  return batch * steps / (time.perf_counter() - t0)


def _host_stream_rate(host, indices, batch, steps, mesh) -> float:
  """Returns the img/s of ``steps`` uint8 batches gathered on the host by
  grain and copied to the devices."""
  stream = sharding.stream_host_batches(host, indices, 0, steps + 1, batch, mesh)
  jax.block_until_ready(next(stream))   # grain's threads are up
  t0 = time.perf_counter()
  for out in stream:
    pass
  jax.block_until_ready(out)
  return batch * steps / (time.perf_counter() - t0)


def _zero_segmentation_loss(seg_logits, masks, has_mask=None):
  del seg_logits, masks, has_mask
  return jnp.zeros((), jnp.float32)


JOINT_VARIANTS = {
    # As the project builds it (config.systems defaults: flax's layers).
    "project": (),
    # Shares of the step (not candidates). Seg loss replaced by a constant:
    # XLA drops the upsampling, pixel CE, mask augmentation and their
    # backward; seg_conv stays (the score map weights the pooling).
    "no_seg_loss": ((losses, "segmentation_loss", _zero_segmentation_loss),),
    # No dropout: what its masks cost.
    "no_dropout": (),
    # Hashed masks (``systems.dropout_rng="hash"``): recomputed where they
    # are applied, never stored; and threefry with one word per 4 decisions
    # (``systems.dropout_bits=8``).
    "hash_dropout": (),
    "dropout_8bit": (),
    # The state row-major (``systems.state_layout="default"``), donated: on
    # XLA:GPU each conv kernel's update is a transposing fusion, which cannot
    # write in place, so XLA adds ~140 copy kernels. What "auto" saves.
    "default_layout": (),
}
# ``config.model`` and ``config.systems`` overrides of a variant.
JOINT_VARIANT_MODEL = {"no_dropout": {"dropout_rate": 0.0}}
JOINT_VARIANT_SYSTEMS = {
    "hash_dropout": {"dropout_rng": "hash"},
    "dropout_8bit": {"dropout_bits": 8},
    "default_layout": {"state_layout": "default"}}


@contextlib.contextmanager
def joint_variant(config, name: str):
  """Inside: the config of ``JOINT_VARIANTS[name]``, its patches applied
  (they must be in place while the step is traced)."""
  variant_config = copy.deepcopy(config)
  variant_config.model.update(JOINT_VARIANT_MODEL.get(name, {}))
  variant_config.systems.update(JOINT_VARIANT_SYSTEMS.get(name, {}))
  with contextlib.ExitStack() as stack:
    for module, attr, value in JOINT_VARIANTS[name]:
      stack.enter_context(_patched(module, attr, value))
    yield variant_config


def compare_jax_variants(make_runners: dict[str, Callable[[], Any]],
                         steps: int, repeats: int, warmup: int,
                         log=print) -> dict[str, Any]:
  """Builds JAX runners and times them interleaved: img/s, FLOPs, compile."""
  runners = {}
  for name, make in make_runners.items():
    runners[name] = make()
    gflop = runners[name].cost["gflop_per_step"]
    log(f"  {name}: compiled in {runners[name].compile_s:.1f} s"
        + (f", {gflop:.1f} GFLOP/step" if gflop else ""))
  trackers = [_PeakTracker(_jax_device_peak) for _ in runners]
  blocks = time_interleaved(list(runners.values()), steps, repeats, warmup,
                            trackers)
  out = {}
  for (name, runner), b in zip(runners.items(), blocks):
    out[name] = {**_summary(b), "compile_s": runner.compile_s, **runner.cost}
  del runners
  gc.collect()
  return out


def _ratio(a, b):
  return a / b if a and b else None


def joint_step_variants(config, batch: int, steps: int, repeats: int,
                        warmup: int, compiler_options=None,
                        log=print) -> dict[str, Any]:
  """The joint step as built and its ``JOINT_VARIANTS``: the time shares of
  the seg loss and dropout, and what each ``config.systems`` alternative
  changes (hashed or 8-bit threefry masks, the state row-major)."""

  def make(name):
    def build():
      with joint_variant(config, name) as variant_config:
        return JaxTrainRunner(variant_config, "joint", batch,
                              compiler_options=compiler_options)
    return build

  out = compare_jax_variants({name: make(name) for name in JOINT_VARIANTS},
                             steps, repeats, warmup, log=log)
  for name, overrides in JOINT_VARIANT_MODEL.items():
    out[name]["model_overrides"] = overrides
  for name, overrides in JOINT_VARIANT_SYSTEMS.items():
    out[name]["systems_overrides"] = overrides
  base, nos = out["project"], out["no_seg_loss"]
  out["dropout_time_share"] = 1 - base["img_per_s"] / out["no_dropout"][
      "img_per_s"]
  for name in JOINT_VARIANTS:
    if name == "project":
      continue
    v = out[name]
    v["gflop_vs_project"] = _ratio(v["gflop_per_step"], base["gflop_per_step"])
    v["time_vs_project"] = _ratio(base["img_per_s"], v["img_per_s"])
    v["time_vs_project_quiet"] = _ratio(base["img_per_s_quiet"],
                                        v["img_per_s_quiet"])
  out["seg_loss_time_share"] = 1 - base["img_per_s"] / nos["img_per_s"]
  if base["img_per_s_quiet"] and nos["img_per_s_quiet"]:
    out["seg_loss_time_share_quiet"] = (
        1 - base["img_per_s_quiet"] / nos["img_per_s_quiet"])
  if base["gflop_per_step"] and nos["gflop_per_step"]:
    out["seg_loss_flop_share"] = (
        1 - nos["gflop_per_step"] / base["gflop_per_step"])
  out["batch"] = batch
  return out


def cpu_options_effect(config, batch: int, steps: int, repeats: int,
                       warmup: int, log=print) -> dict[str, Any]:
  """Classification step with XLA's defaults vs ``cpu_compiler_options``."""
  options = cpu_compiler_options("cpu")
  out = compare_jax_variants(
      {"xla_default": lambda: JaxTrainRunner(config, "classification", batch),
       "cpu_compiler_options": lambda: JaxTrainRunner(
           config, "classification", batch, compiler_options=options)},
      steps, repeats, warmup, log=log)
  out["options"] = options
  out["xla_flags_equivalent"] = cpu_xla_flags()
  out["speedup"] = _ratio(out["cpu_compiler_options"]["img_per_s"],
                          out["xla_default"]["img_per_s"])
  out["speedup_quiet"] = _ratio(out["cpu_compiler_options"]["img_per_s_quiet"],
                                out["xla_default"]["img_per_s_quiet"])
  out["batch"] = batch
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
  line = _proc_line("/proc/cpuinfo", "model name")
  if line:
    return line.split(":", 1)[1].strip()
  return platform.processor() or None


def torch_available() -> tuple[bool, str]:
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    return False, f"torch is not importable ({e})"
  return True, ""


def row_plan(batches, kinds, eval_batch) -> list[tuple[str, int]]:
  """``(step, batch)`` rows, most wanted first: the joint step at each batch
  (largest first), then eval, then the other step kinds.

  A time budget cuts the plan from the end, so a short lease still measures
  the headline rows (the joint step at the throughput and the paper's batch).
  """
  batches = sorted(batches, reverse=True)
  rows = [("joint", b) for b in batches if "joint" in kinds]
  rows.append(("eval", eval_batch))
  rows += [(k, b) for b in batches for k in kinds if k != "joint"]
  return rows


def steps_per_block(size: dict, batch: int) -> int:
  """Enough steps that a timed block sees ``min_images_per_block`` images
  (a block of 20 steps at batch 10 would be over in ~0.1 s on a GPU)."""
  return max(size["steps"], -(-size.get("min_images_per_block", 0) // batch))


class _Budget:
  """Wall-clock budget: a piece of work starts only if it is expected to end
  in time (expected: the longest piece of the same kind so far)."""

  def __init__(self, seconds: float | None,
               clock: Callable[[], float] = time.perf_counter):
    self.seconds, self.clock, self.t0 = seconds, clock, clock()
    self.longest: dict[str, float] = {}

  def left(self) -> float:
    if self.seconds is None:
      return float("inf")
    return self.seconds - (self.clock() - self.t0)

  def allows(self, what: str, estimate: float = 0.0) -> bool:
    return max(self.longest.get(what, 0.0), estimate) < self.left()

  @contextlib.contextmanager
  def piece(self, what: str):
    t0 = self.clock()
    yield
    self.longest[what] = max(self.longest.get(what, 0.0), self.clock() - t0)


def run(size_name: str, *, steps: int | None = None,
        repeats: int | None = None, dtype: str | None = None,
        batches=None, kinds=STEP_KINDS, with_torch: bool = True,
        torch_compile: str = "auto", xla_options: str = "recommended",
        analysis: bool = True, time_budget_s: float | None = None,
        on_row: Callable[[dict], None] | None = None,
        log=print) -> dict[str, Any]:
  """Runs the benchmark; returns the JSON-able result (see module doc).

  Rows run in ``row_plan`` order. With ``time_budget_s``, a row (or the
  analysis) that would not end within the budget is skipped and listed under
  ``skipped``; a row that raises is recorded under ``errors`` and the rest
  still run. ``on_row(result)`` is called after each row and each analysis
  piece (partial results).
  """
  size = _size_config(size_name, steps, repeats, batches)
  dtype = dtype or size["dtype"]
  config = make_config(size, dtype)
  platform_name = jax.devices()[0].platform
  options = (cpu_compiler_options(platform_name)
             if xla_options == "recommended" else {})
  with_torch, compile_torch, torch_info = _torch_reference(
      with_torch, torch_compile, dtype, log)
  result = _start_result(size_name, size, dtype, options, torch_info,
                         time_budget_s, log)
  time_row = functools.partial(
      _time_row, config=config, size=size, dtype=dtype, options=options,
      with_torch=with_torch, compile_torch=compile_torch)
  budget = _Budget(time_budget_s)
  log(HEADER)
  for kind, batch in row_plan(size["batches"], kinds, size["eval_batch"]):
    ran = _add_row(result, budget, kind, batch, time_row, with_torch, log)
    if ran and on_row:
      on_row(result)
  if analysis and _analysis_fits(result, budget, log):
    _analysis(result, config, size, options, platform_name, xla_options, log,
              on_piece=on_row)
  return result


def _size_config(size_name: str, steps, repeats, batches) -> dict:
  """Returns a copy of ``SIZES[size_name]`` with the overrides given."""
  size = dict(SIZES[size_name])
  for key, value in (("steps", steps), ("repeats", repeats)):
    if value:
      size[key] = value
  if batches:
    size["batches"] = tuple(batches)
  return size


def _torch_reference(with_torch: bool, torch_compile: str, dtype: str, log):
  """Returns ``(with_torch, compile_torch, torch_info)``: whether the torch
  reference runs (only where torch imports), whether it is compiled, and
  what the result records about it."""
  if not with_torch:
    return False, False, None
  ok, why = torch_available()
  if not ok:
    log(f"torch reference skipped: {why}")
    return False, False, {"skipped": why}
  from benchmarks import torch_reference as tr  # pylint: disable=g-import-not-at-top,line-too-long
  compile_torch = {"on": True, "off": False}.get(
      torch_compile, tr.default_device().type == "cuda")
  torch_info = {**tr.runtime_info(), "compile": compile_torch,
                "amp_bf16": dtype == "bfloat16", "channels_last": True}
  return True, compile_torch, torch_info


def _start_result(size_name, size, dtype, options, torch_info, time_budget_s,
                  log) -> dict[str, Any]:
  """Logs what is about to be timed; returns the result before any row."""
  info = device_info()
  log(f"device: {info['platform']} {info['device_kind']} "
      f"({info['cpu_count']} CPU cores); size '{size_name}': ResNet-"
      f"{size['depth']} x{size['width']} at {size['crop']} px (crops of "
      f"{size['image_size']}), {dtype}, batches {size['batches']}, "
      f"{size['repeats']} x {size['steps']} steps after {size['warmup']} "
      f"warm-up; JAX compiler options {options or 'XLA defaults'}")
  return {"device": info, "size": size_name, "size_config": size,
          "dtype": dtype, "jax_compiler_options": options,
          "torch": torch_info, "quiet_other_cpu_frac": QUIET_OTHER_CPU,
          "results": [], "time_budget_s": time_budget_s, "skipped": [],
          "errors": []}


def _add_row(result, budget, kind: str, batch: int, time_row, with_torch,
             log) -> bool:
  """Times one planned row into ``result``: its entries, or its error.
  Returns False, the row listed as skipped, where the budget has no room."""
  row = {"step": kind, "batch": batch}
  # Compiling dominates a row, whatever its batch: one estimate per kind.
  piece = "eval" if kind == "eval" else "train"
  if not budget.allows(piece):
    log(f"{kind:<15}{batch:>6}  skipped: {budget.left():.0f} s of the time "
        f"budget left, the longest such row took "
        f"{budget.longest.get(piece, 0.0):.0f} s")
    result["skipped"].append(row)
    return False
  try:
    # A row that raises leaves the budget's estimate as it was.
    with budget.piece(piece):
      entries = time_row(kind, batch)
      result["results"].extend(entries)
      log(format_row(entries))
      gc.collect()
      if with_torch:
        _torch_release_cache()
  except Exception as e:  # pylint: disable=broad-except
    # One broken row (say, torch.compile on a new driver) must not cost the
    # rest of a leased accelerator's measurements.
    error = f"{type(e).__name__}: {str(e)[:500]}"
    log(f"{kind:<15}{batch:>6}  FAILED: {error}")
    traceback.print_exc()
    result["errors"].append({**row, "error": error})
    gc.collect()
  return True


def _time_row(kind: str, batch: int, *, config, size, dtype, options,
              with_torch, compile_torch) -> list[dict]:
  """Times the row's JAX step and, interleaved, its torch twin; returns
  their entries, JAX's first."""
  runners = [_jax_runner(kind, batch, config, options)]
  trackers = [_PeakTracker(_jax_device_peak)]
  if with_torch:
    t = _torch_runner(kind, batch, size, dtype == "bfloat16", compile_torch)
    t.reset_device_peak()
    runners.append(t)
    trackers.append(_PeakTracker(t.device_peak))
  blocks = time_interleaved(runners, steps_per_block(size, batch),
                            size["repeats"], size["warmup"], trackers)
  entries = []
  for runner, b, tracker in zip(runners, blocks, trackers):
    extra = {"ms_per_step": 1e3 * batch / _summary(b)["img_per_s"]}
    if runner.framework == "torch":
      extra.update(_torch_compile_fields(runner))
    entries.append(_entry(runner, b, step=kind, batch=batch,
                          image_size=size["crop"], dtype=dtype,
                          tracker=tracker, extra=extra))
  return entries


def _jax_runner(kind: str, batch: int, config, options):
  """Returns the project's runner for a row: eval or a ``kind`` train step."""
  if kind == "eval":
    return JaxEvalRunner(config, batch, compiler_options=options)
  return JaxTrainRunner(config, kind, batch, compiler_options=options)


def _torch_runner(kind: str, batch: int, size, amp: bool, compile_torch):
  """Returns the torch reference's runner for a row (``_jax_runner``'s)."""
  if kind == "eval":
    return TorchEvalRunner(size, batch, amp, compile_torch)
  return TorchTrainRunner(size, kind, batch, amp, compile_torch)


def _torch_compile_fields(runner) -> dict[str, Any]:
  """Returns whether torch.compile held for the runner and, if not, why."""
  fields = {"torch_compile": _compiled_ok(runner)}
  error = getattr(getattr(runner, "step", runner), "compile_error", None)
  if error:
    fields["torch_compile_error"] = error
  return fields


def _analysis_fits(result, budget, log) -> bool:
  """Whether the analysis is expected to end within the budget; where not,
  it is listed as skipped."""
  # The analysis compiles the joint step three more times (JAX only).
  estimate = 1.5 * budget.longest.get("train", 0.0)
  if budget.allows("analysis", estimate):
    return True
  log(f"analysis skipped: {budget.left():.0f} s of the time budget left")
  result["skipped"].append({"step": "analysis"})
  return False


def _analysis(result, config, size, options, platform_name, xla_options, log,
              on_piece=None):
  """The joint step's variants, the upsampling formulations, the input
  pipeline and the XLA:CPU options, in that order (in place). Each piece
  that raises is listed under ``errors`` and the rest still run;
  ``on_piece(result)`` follows each piece."""
  b0 = max(size["batches"])
  result["analysis"] = {}
  pieces = [("joint_step_variants", _analysis_joint_variants),
            ("upsample_alone", _analysis_upsample),
            ("input_pipeline", _analysis_input_pipeline)]
  if platform_name == "cpu" and xla_options == "recommended":
    pieces.append(("cpu_compiler_options_effect", _analysis_cpu_options))
  for name, piece in pieces:
    try:
      result["analysis"][name] = piece(result, config, size, b0, options, log)
    except Exception as e:  # pylint: disable=broad-except
      error = f"{type(e).__name__}: {str(e)[:500]}"
      log(f"analysis {name} FAILED: {error}")
      traceback.print_exc()
      result["errors"].append({"step": f"analysis/{name}", "error": error})
    if on_piece:
      on_piece(result)


def _analysis_joint_variants(result, config, size, b0, options, log):
  log(f"joint step variants (batch {b0}):")
  joint = joint_step_variants(config, b0, size["steps"], size["repeats"],
                              size["warmup"], compiler_options=options,
                              log=log)
  log(_format_variants(joint, tuple(JOINT_VARIANTS)))
  log(f"  seg loss + upsampling: {_pct(joint.get('seg_loss_flop_share'))} "
      f"of the joint step's FLOPs, {_pct(joint['seg_loss_time_share'])} of "
      f"its time (quiet blocks: "
      f"{_pct(joint.get('seg_loss_time_share_quiet'))}); dropout: "
      f"{_pct(joint['dropout_time_share'])}; hashed dropout masks: "
      f"{_fmt(joint['hash_dropout']['time_vs_project'])}x the time")
  torch_joint = [e["img_per_s"] for e in result["results"]
                 if e["framework"] == "torch" and e["step"] == "joint"
                 and e["batch"] == b0]
  if torch_joint:
    # The torch row ran earlier in this job, on the same device.
    for name in JOINT_VARIANTS:
      joint[name]["vs_torch_joint"] = _ratio(joint[name]["img_per_s"],
                                             torch_joint[0])
    log("  JAX variant / torch joint step (same job): " + ", ".join(
        f"{name} {_fmt(joint[name]['vs_torch_joint'])}"
        for name in JOINT_VARIANTS))
  return joint


def _analysis_upsample(result, config, size, b0, options, log):
  del result, config
  log("segmentation upsampling alone:")
  up = upsample_analysis(b0, size["crop"], compiler_options=options)
  for name in UPSAMPLE_IMPLS:
    u = up[name]
    log(f"  {name}: {_fmt(u['forward_gflop'], '.4f')} GFLOP fwd "
        f"(XLA count), "
        f"{u['forward_ms']:.2f} ms fwd, {u['forward_backward_ms']:.2f} ms "
        f"fwd+bwd, max |diff| to subpixel "
        f"{u['max_abs_diff_vs_subpixel']:.1e}; HLO: "
        f"{u['forward_hlo_convolutions']}")
  log(f"  dense zero-stuffed conv would be "
      f"{up['dense_zero_stuffed_gflop']:.1f} GFLOP fwd")
  return up


def _analysis_input_pipeline(result, config, size, b0, options, log):
  del options
  inputs = input_pipeline_throughput(
      config, b0, steps=max(size["steps"], 2000 // b0), log=log)
  train_rates = [e["img_per_s"] for e in result["results"]
                 if e["framework"] == "jax" and e["batch"] == b0
                 and e["step"] != "eval"]
  if train_rates:
    # Input pipeline throughput over the fastest train step's: > 1 means the
    # pipeline keeps up.
    for name in ("device_augment", "host_stream"):
      inputs[f"{name}_vs_fastest_train_step"] = _ratio(
          inputs[f"{name}_img_per_s"], max(train_rates))
  return inputs


def _analysis_cpu_options(result, config, size, b0, options, log):
  del result, options
  log(f"XLA:CPU options (classification, batch {b0}):")
  effect = cpu_options_effect(config, b0, size["steps"], size["repeats"],
                              size["warmup"], log=log)
  log(_format_variants(effect, ("xla_default", "cpu_compiler_options")))
  return effect


def _pct(x) -> str:
  return "-" if x is None else f"{100 * x:.1f}%"


def _fmt(x, spec=".2f") -> str:
  return "-" if x is None else format(x, spec)


def _format_variants(out: dict, names) -> str:
  lines = [f"  {'variant':<22}{'img/s':>8}{'quiet img/s':>13}{'GFLOP/step':>12}"
           f"{'compile s':>11}"]
  for name in names:
    v = out[name]
    lines.append(f"  {name:<22}{v['img_per_s']:>8.2f}"
                 f"{_fmt(v['img_per_s_quiet']):>13}"
                 f"{_fmt(v['gflop_per_step'], '.1f'):>12}"
                 f"{v['compile_s']:>11.1f}")
  return "\n".join(lines)


def _torch_release_cache():
  """Returns torch's cached GPU blocks, so the next row's JAX step has room."""
  import torch  # pylint: disable=g-import-not-at-top
  if torch.cuda.is_available():
    torch.cuda.empty_cache()


def _compiled_ok(runner) -> bool:
  holder = getattr(runner, "step", runner)
  return bool(runner.options.compile
              and getattr(holder, "compile_error", None) is None)


HEADER = (f"{'step':<15}{'batch':>6}{'dtype':>10}{'jax img/s':>11}"
          f"{'torch img/s':>13}{'jax/torch':>11}{'quiet j/t':>11}"
          f"{'jax compile s':>15}{'jax GFLOP/img':>15}{'jax peak MiB':>14}"
          f"{'torch peak MiB':>16}")


def format_row(entries: list[dict]) -> str:
  """One table row: the JAX entry, its torch twin (if any), their ratios."""
  j = next(e for e in entries if e["framework"] == "jax")
  t = next((e for e in entries if e["framework"] == "torch"), None)
  mib = lambda v: f"{v / 2**20:.0f}" if v else "-"  # noqa: E731
  flop = (f"{j['gflop_per_step'] / j['batch']:.1f}" if j["gflop_per_step"]
          else "-")
  ratio = _ratio(j["img_per_s"], t["img_per_s"]) if t else None
  quiet = _ratio(j["img_per_s_quiet"], t["img_per_s_quiet"]) if t else None
  return (f"{j['step']:<15}{j['batch']:>6}{j['dtype']:>10}"
          f"{j['img_per_s']:>11.2f}{_fmt(t and t['img_per_s']):>13}"
          f"{_fmt(ratio):>11}{_fmt(quiet):>11}{j['compile_s']:>15.1f}"
          f"{flop:>15}{mib(j['peak_mem_bytes']):>14}"
          f"{mib(t['peak_mem_bytes']) if t else '-':>16}")


def format_table(result: dict) -> str:
  rows, by_key = [HEADER], {}
  for e in result["results"]:
    by_key.setdefault((e["step"], e["batch"]), []).append(e)
  for entries in by_key.values():
    rows.append(format_row(entries))
  return "\n".join(rows)


def main(argv=None):
  args = _parse_args(argv)
  # Both frameworks share the accelerator: JAX must not take 75% of it upfront.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  size = args.device_size
  if size == "auto":
    size = "small" if jax.devices()[0].platform == "cpu" else "full"
  t0 = time.perf_counter()
  command = " ".join(["python -m benchmarks.benchmark"]
                     + list(argv if argv is not None else sys.argv[1:]))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

  def write(result, complete):
    result.update(wall_s=time.perf_counter() - t0, command=command,
                  complete=complete)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
      json.dump(result, f, indent=2)
    os.replace(tmp, args.out)

  result = run(size, steps=args.steps, repeats=args.repeats, dtype=args.dtype,
               batches=args.batches, kinds=tuple(args.kinds),
               with_torch=not args.no_torch, torch_compile=args.torch_compile,
               xla_options=args.xla_options, analysis=not args.no_analysis,
               time_budget_s=args.time_budget_s,
               on_row=lambda r: write(r, complete=False))
  write(result, complete=True)
  print(format_table(result))
  print(f"wrote {args.out} ({result['wall_s']:.0f} s)")


def _parse_args(argv) -> argparse.Namespace:
  """Returns the command line's options (``argv``; None: ``sys.argv``)."""
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
  parser.add_argument("--step-kinds", nargs="+", default=list(STEP_KINDS),
                      choices=STEP_KINDS, dest="kinds")
  parser.add_argument("--torch-compile", default="auto",
                      choices=("auto", "on", "off"),
                      help="torch.compile the reference (auto: on for CUDA)")
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--no-analysis", action="store_true",
                      help="skip the upsampling/seg-loss/XLA-option analysis")
  parser.add_argument("--time-budget-s", type=float, default=None,
                      help="skip rows that would end past this many seconds "
                           "(most wanted rows run first); the JSON is "
                           "rewritten after every row")
  parser.add_argument("--xla-options", default="recommended",
                      choices=("recommended", "default"),
                      help="recommended: compile the JAX steps with "
                           "cpu_compiler_options() (CPU only)")
  return parser.parse_args(argv)


if __name__ == "__main__":
  main()
