"""What the harness times: the project's own train and eval steps, and their
twins in ``benchmarks.torch_reference``.

The JAX train step is the training job's: ``train.resident_train_step``
with a stage of the config, the optimizer of ``optim.make_optimizer``, the
state of ``train.create_train_state`` compiled ahead and donated as
``config.systems`` says, a synthetic uint8 split on the device. A variant
of the step is a config override, or a function passed in (``seg_loss``).
"""

from __future__ import annotations

import functools
import os
import platform
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from rapool_jax import config_files
from rapool_jax import evaluate
from rapool_jax import optim
from rapool_jax import sharding
from rapool_jax import train
from rapool_jax.data import pipeline
from rapool_jax.models import rapool_net


def make_config(size: dict, dtype: str,
                spec: str = "configs/isic2017.py:paper"):
  """The config of the paper's protocol (``spec``) at benchmark size: its
  stages, optimizer, augmentation and model, with the size's depth, width,
  image and crop sizes and ``dtype``."""
  c = config_files.load(config_files.resolve(spec))
  c.data.image_size, c.data.crop_size = size["image_size"], size["crop"]
  c.model.depth, c.model.width, c.model.dtype = (size["depth"], size["width"],
                                                 dtype)
  c.model.num_classes = pipeline.num_classes(c.data.task)
  return c


def synthetic_device_data(num: int, image_size: int, seed: int = 0):
  """uint8 images ``[N, S, S, 3]``, disc masks ``[N, S, S]``, labels and
  has_mask, on the device."""
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
  """Random ``{"params", "batch_stats"}``: weights do not change the timing,
  and the paper config's pretrained file need not be there."""
  variables = _init_fn(model, crop)(jax.random.key(seed),
                                    jnp.zeros((1, crop, crop, 3), jnp.float32))
  return {"params": variables["params"],
          "batch_stats": variables["batch_stats"]}


def _cost_on_cpu_client(lowered) -> dict[str, float] | None:
  """XLA's cost analysis of ``lowered``'s HLO, by the CPU client: the CUDA
  plugin leaves ``Lowered.cost_analysis`` unimplemented, and the lowered HLO
  does not depend on the backend. jaxlib offers this only privately (None
  where it moved), hence the import here."""
  try:
    from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
    from jax.extend import backend  # pylint: disable=g-import-not-at-top
    return _jax.hlo_module_cost_analysis(
        backend.get_backend("cpu"), lowered.compiler_ir("hlo").as_hlo_module())
  except Exception:  # pylint: disable=broad-except
    return None


def xla_mem_bytes(compiled) -> int | None:
  """XLA's memory for an executable: arguments + outputs + temporaries -
  aliased (None where unreported)."""
  try:
    mem = compiled.memory_analysis()
    return int(mem.temp_size_in_bytes + mem.argument_size_in_bytes
               + mem.output_size_in_bytes - mem.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return None


def cost(lowered, compiled) -> dict[str, Any]:
  """GFLOPs of the lowered program and XLA's memory for the executable (None
  where unreported). FLOPs are counted before optimisation: on a GPU the
  optimised HLO hands convolutions to cuDNN calls, which XLA does not count."""
  out = {"gflop_per_step": None, "xla_mem_bytes": xla_mem_bytes(compiled)}
  try:
    counted = lowered.cost_analysis()
    if isinstance(counted, (list, tuple)):
      counted = counted[0]
    counted = counted or _cost_on_cpu_client(lowered)
    if counted and "flops" in counted:
      out["gflop_per_step"] = float(counted["flops"]) / 1e9
  except Exception:  # pylint: disable=broad-except
    pass
  return out


def train_step_program(config, stage_name: str, batch: int, seed: int = 0,
                       seg_loss: Callable | None = None):
  """``(step, state, idxs, key, split, mesh)``: the project's step for one
  stage, called ``step(state, idxs[i], key, split)``, on a fresh state
  (``train.create_train_state``) and a synthetic split of ``batch``
  examples; ``idxs`` are four permutations of it. ``seg_loss`` replaces the
  step's segmentation loss (``train.train_step``'s argument)."""
  mesh = sharding.make_mesh()
  model = rapool_net.build_model(config.model, config.systems)
  stage = config.stages[stage_name]
  variables = init_variables(model, config.data.crop_size, seed)
  tx = optim.make_optimizer(config.optimizer, stage, variables["params"])
  state = train.create_train_state(model, variables, tx, mesh)
  images, masks, labels, has_mask = synthetic_device_data(
      batch, config.data.image_size, seed)
  split = dict(images=images, masks=masks, labels=labels, has_mask=has_mask)
  rng = np.random.default_rng(seed)
  idxs = [jnp.asarray(rng.permutation(batch).astype(np.int32))
          for _ in range(4)]
  kwargs = {"segmentation_loss": seg_loss} if seg_loss else {}
  step = functools.partial(
      train.resident_train_step, stage=stage, data=config.data,
      mean=tuple(config.data.mean), std=tuple(config.data.std), **kwargs)
  key = train.make_key(seed, config.systems.prng_impl)
  return step, state, idxs, key, split, mesh


def lower_train_step(config, step, state, args: tuple, mesh):
  """``sharding.lower_train_step`` as a training run calls it: the state
  replicated over ``mesh``, laid out and donated as ``config.systems`` says."""
  return sharding.lower_train_step(
      step, state, args, sharding.replicated(mesh),
      layout=config.systems.state_layout, donate=config.systems.donate_state)


class JaxTrainRunner:
  """The project's train step for one stage: compiled ahead, state donated."""

  framework = "jax"

  def __init__(self, config, stage_name: str, batch: int, seed: int = 0,
               compiler_options: dict[str, Any] | None = None,
               seg_loss: Callable | None = None):
    self.batch = batch
    step, state, self.idxs, self.key, self.data, mesh = train_step_program(
        config, stage_name, batch, seed, seg_loss)
    t0 = time.perf_counter()
    lowered = lower_train_step(config, step, state,
                               (self.idxs[0], self.key, self.data), mesh)
    self.compiled = lowered.compile(compiler_options=compiler_options)
    self.compile_s = time.perf_counter() - t0
    self.state = sharding.place_state(self.compiled, state)
    self.cost = cost(lowered, self.compiled)

  def run(self, num_steps: int) -> float:
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
    variables = init_variables(model, config.data.crop_size, seed)
    images, masks, _, _ = synthetic_device_data(batch, config.data.crop_size,
                                                seed)
    self.args = (variables, images, masks)
    fn = jax.jit(functools.partial(
        evaluate.eval_step, model=model, pooling="region",
        mean=tuple(config.data.mean), std=tuple(config.data.std)))
    t0 = time.perf_counter()
    lowered = fn.lower(*self.args)
    self.compiled = lowered.compile(compiler_options=compiler_options)
    self.compile_s = time.perf_counter() - t0
    self.cost = cost(lowered, self.compiled)

  def run(self, num_steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(num_steps):
      out = self.compiled(*self.args)
    jax.block_until_ready(out)
    return time.perf_counter() - t0


def jax_runner(kind: str, batch: int, config, options):
  """The project's runner for a row: eval, or a ``kind`` train step."""
  if kind == "eval":
    return JaxEvalRunner(config, batch, compiler_options=options)
  return JaxTrainRunner(config, kind, batch, compiler_options=options)


def device_info() -> dict[str, Any]:
  d = jax.devices()[0]
  line = timing.proc_line("/proc/cpuinfo", "model name")
  return {"platform": d.platform, "device_kind": d.device_kind,
          "num_devices": jax.device_count(), "cpu_count": os.cpu_count(),
          "cpu_model": (line.split(":", 1)[1].strip() if line
                        else platform.processor() or None),
          "python": platform.python_version(),
          "jax_version": jax.__version__,
          "jaxlib_version": jax.lib.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}
