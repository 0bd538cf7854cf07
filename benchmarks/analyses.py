"""The benchmark's analyses: the joint step's variants, the segmentation
upsampling alone, and the input pipeline alone.
"""

from __future__ import annotations

import copy
import gc
import re
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import runners
from benchmarks import timing
from rapool_jax import sharding
from rapool_jax import train
from rapool_jax.data import pipeline
from rapool_jax.models import rapool_net


def _ratio(a, b):
  return a / b if a and b else None


# ----------------------------------------------------------------------------
# The joint step's variants.


def zero_segmentation_loss(seg_logits, masks, has_mask=None):
  del seg_logits, masks, has_mask
  return jnp.zeros((), jnp.float32)


class Variant(NamedTuple):
  """A change to the joint step: ``config.model`` and ``config.systems``
  overrides, and a segmentation loss passed to the step in place of the
  project's."""
  model: dict | None = None
  systems: dict | None = None
  seg_loss: Callable | None = None


JOINT_VARIANTS = {
    # As the project builds it (config.systems defaults: flax's layers).
    "project": Variant(),
    # Shares of the step, not candidates. The seg loss a constant: XLA drops
    # the upsampling, pixel CE, mask augmentation and their backward;
    # seg_conv stays (its score map weights the pooling).
    "no_seg_loss": Variant(seg_loss=zero_segmentation_loss),
    "no_dropout": Variant(model={"dropout_rate": 0.0}),
    # Hashed masks, recomputed where applied, never stored; threefry with
    # one word per 4 decisions.
    "hash_dropout": Variant(systems={"dropout_rng": "hash"}),
    "dropout_8bit": Variant(systems={"dropout_bits": 8}),
    # The state row-major, donated: on XLA:GPU each conv kernel's update is
    # then a transposing fusion that cannot write in place (~140 copies).
    "default_layout": Variant(systems={"state_layout": "default"}),
}


def variant_runner(config, name: str, batch: int, compiler_options=None):
  """The joint step of ``JOINT_VARIANTS[name]``."""
  variant = JOINT_VARIANTS[name]
  config = copy.deepcopy(config)
  config.model.update(variant.model or {})
  config.systems.update(variant.systems or {})
  return runners.JaxTrainRunner(config, "joint", batch,
                                compiler_options=compiler_options,
                                seg_loss=variant.seg_loss)


def compare_jax_variants(make_runners: dict[str, Callable[[], Any]],
                         steps: int, repeats: int, warmup: int, log=print,
                         reference: Callable[[], Any] | None = None,
                         min_block_s: float = 0.0) -> dict[str, Any]:
  """Builds JAX runners and times them interleaved. With ``reference`` (a
  torch runner's factory), its blocks run in the middle of each round and
  every variant gets a row's ``vs_torch``, paired with them."""
  built = {}
  for name, make in make_runners.items():
    built[name] = make()
    gflop = built[name].cost["gflop_per_step"]
    log(f"  {name}: compiled in {built[name].compile_s:.1f} s"
        + (f", {gflop:.1f} GFLOP/step" if gflop else ""))
  timed = list(built.values())
  middle = len(timed) // 2  # no variant is more than half a round from it
  if reference is not None:
    timed.insert(middle, reference())
  blocks = timing.time_interleaved(
      timed, steps, repeats, warmup, [timing.PeakTracker() for _ in timed],
      min_block_s)
  ref_blocks = blocks.pop(middle) if reference is not None else None
  out = {}
  for (name, runner), b in zip(built.items(), blocks):
    out[name] = {**timing.summary(b), "compile_s": runner.compile_s,
                 **runner.cost}
    if ref_blocks:
      out[name].update(timing.vs_reference(b, ref_blocks))
  if ref_blocks:
    out["torch_reference"] = timing.summary(ref_blocks)
  del built, timed
  gc.collect()
  return out


def joint_step_variants(config, batch: int, steps: int, repeats: int,
                        warmup: int, compiler_options=None, log=print,
                        reference: Callable[[], Any] | None = None,
                        min_block_s: float = 0.0,
                        names=tuple(JOINT_VARIANTS)) -> dict[str, Any]:
  """The joint step as built (``project``, always) and its variants in
  ``names``, interleaved: the time shares of the seg loss and dropout, and
  what each ``config.systems`` alternative changes."""
  names = ["project"] + [n for n in names if n != "project"]
  out = compare_jax_variants(
      {n: (lambda n=n: variant_runner(config, n, batch, compiler_options))
       for n in names},
      steps, repeats, warmup, log=log, reference=reference,
      min_block_s=min_block_s)
  for name in names:
    out[name]["model_overrides"] = JOINT_VARIANTS[name].model
    out[name]["systems_overrides"] = JOINT_VARIANTS[name].systems
  out.update(variant_shares(out, names))
  out["batch"] = batch
  return out


def variant_shares(out: dict, names) -> dict[str, Any]:
  """Each variant against the project step (in place), and the time shares
  of dropout and the seg loss where their variants ran."""
  base, shares = out["project"], {}
  for name in names[1:]:
    v = out[name]
    v["gflop_vs_project"] = _ratio(v["gflop_per_step"], base["gflop_per_step"])
    v["time_vs_project"] = _ratio(base["img_per_s"], v["img_per_s"])
    v["time_vs_project_quiet"] = _ratio(base["img_per_s_quiet"],
                                        v["img_per_s_quiet"])
  if "no_dropout" in out:
    shares["dropout_time_share"] = 1 - base["img_per_s"] / out["no_dropout"][
        "img_per_s"]
  nos = out.get("no_seg_loss")
  if nos:
    shares["seg_loss_time_share"] = 1 - base["img_per_s"] / nos["img_per_s"]
    if base["img_per_s_quiet"] and nos["img_per_s_quiet"]:
      shares["seg_loss_time_share_quiet"] = (
          1 - base["img_per_s_quiet"] / nos["img_per_s_quiet"])
    if base["gflop_per_step"] and nos["gflop_per_step"]:
      shares["seg_loss_flop_share"] = (
          1 - nos["gflop_per_step"] / base["gflop_per_step"])
  return shares


# ----------------------------------------------------------------------------
# The segmentation upsampling alone.


def conv_transpose_zero_stuffed(x, kernel, stride: int):
  """torch's ``ConvTranspose2d(k=2s, stride=s, padding=s//2)`` as
  ``lax.conv_transpose``, a conv over an ``s``-dilated (zero-stuffed) input:
  ``[B, h, w, Cin]`` -> ``[B, s*h, s*w, Cout]``."""
  k = kernel.shape[0]
  pad = k - 1 - stride // 2
  # transpose_kernel flips the taps and reads the kernel as the forward conv's
  # (output channels of the transposed conv on the I axis): swap I and O.
  return jax.lax.conv_transpose(
      x, jnp.swapaxes(kernel, 2, 3).astype(x.dtype), (stride, stride),
      ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      transpose_kernel=True)


def subpixel_as_dot(x, kernel, stride: int):
  """``transposed_conv_as_subpixel`` with its 3x3 conv as one matmul over
  explicit patches: 18 inputs per output position is a shape convolution
  libraries may serve poorly, and an ordinary GEMM."""
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


def conv_ops(hlo_text: str) -> list[str]:
  """The convolutions of optimised HLO text, ``shape window dim_labels``,
  plus `` target`` where the backend made one a library call (cuDNN)."""
  ops = []
  for line in hlo_text.splitlines():
    m = (re.search(r"= (\S+) convolution\(.*?(window=\{[^}]*\}).*?"
                   r"(dim_labels=\S+?),", line)
         or re.search(r"= \(?(\S+?),? .*custom-call\(.*?(window=\{[^}]*\}).*?"
                      r"(dim_labels=\S+?),.*custom_call_target="
                      r"\"([^\"]*conv[^\"]*)\"", line))
    if m:
      ops.append(" ".join(m.groups()))
  return ops


def best_time(fn, *args, repeats: int = 5) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return min(times)


def _upsample_impl(fn, x, kernel, stride, compiler_options) -> dict:
  fwd = jax.jit(lambda x, w: fn(x, w, stride))
  grad = jax.jit(jax.grad(lambda x, w: jnp.sum(fn(x, w, stride)**2),
                          argnums=(0, 1)))
  fwd_l, grad_l = fwd.lower(x, kernel), grad.lower(x, kernel)
  fwd_c = fwd_l.compile(compiler_options=compiler_options)
  grad_c = grad_l.compile(compiler_options=compiler_options)
  return {
      "forward_gflop": runners.cost(fwd_l, fwd_c)["gflop_per_step"],
      "forward_backward_gflop": runners.cost(grad_l, grad_c)["gflop_per_step"],
      "forward_hlo_convolutions": conv_ops(fwd_c.as_text()),
      "forward_backward_hlo_convolutions": conv_ops(grad_c.as_text()),
      "forward_ms": 1e3 * best_time(fwd_c, x, kernel),
      "forward_backward_ms": 1e3 * best_time(grad_c, x, kernel),
      "output": fwd_c(x, kernel)}


def upsample_analysis(batch: int, crop: int, stride: int = 32,
                      compiler_options=None) -> dict[str, Any]:
  """The 2-channel stride-``s`` upsampling alone, each of ``UPSAMPLE_IMPLS``:
  XLA's FLOP count (only taps that hit real input: it hides zero-stuffing),
  the optimised HLO's convolutions, and the best forward and forward +
  backward times. ``dense_zero_stuffed_gflop``: a conv over the dilated input."""
  h, k = crop // stride, 2 * stride
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, h, h, 2)).astype(np.float32))
  kernel = jnp.asarray(rng.normal(size=(k, k, 2, 2)).astype(np.float32))
  out = {"batch": batch, "input_hw": h, "stride": stride, "kernel": k,
         "dense_zero_stuffed_gflop": 2 * batch * crop * crop * k * k * 2 * 2
                                     / 1e9}
  for name, fn in UPSAMPLE_IMPLS.items():
    out[name] = _upsample_impl(fn, x, kernel, stride, compiler_options)
  reference = out["subpixel"]["output"]
  for name in UPSAMPLE_IMPLS:
    out[name]["max_abs_diff_vs_subpixel"] = float(jnp.max(jnp.abs(
        out[name].pop("output") - reference)))
  return out


# ----------------------------------------------------------------------------
# The input pipeline alone.


def _device_augment_rate(data, host, indices, batch, steps, mesh) -> float:
  """img/s of batches gathered and augmented in jit from ``host`` held on
  the devices: what ``resident_train_step`` runs before the network."""

  @jax.jit
  def device_input(split, idx, key):
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
  """img/s of uint8 batches gathered on the host by grain and copied to the
  devices (``sharding.stream_host_batches``)."""
  stream = sharding.stream_host_batches(host, indices, 0, steps + 1, batch, mesh)
  jax.block_until_ready(next(stream))   # grain's threads are up
  t0 = time.perf_counter()
  for out in stream:
    pass
  jax.block_until_ready(out)
  return batch * steps / (time.perf_counter() - t0)


def input_pipeline_throughput(config, batch: int, steps: int,
                              num_examples: int | None = None,
                              log=print) -> dict[str, Any]:
  """img/s of the trainer's two input paths without the network: a split on
  the devices augmented in jit, and batches streamed from the host."""
  mesh, n = sharding.make_mesh(), num_examples or 4 * batch
  rng, s = np.random.default_rng(0), config.data.image_size
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
    result["host_stream_img_per_s"] = _host_stream_rate(host, indices, batch,
                                                        steps, mesh)
  except ImportError as e:
    # A leased accelerator may lack grain: keep the on-device figure.
    result["host_stream_skipped"] = f"grain is not importable: {e}"
  host_rate = result["host_stream_img_per_s"]
  log(f"input pipeline alone (batch {batch}): on-device augmentation "
      f"{device_rate:.0f} img/s, host stream (grain + copy) "
      + (f"{host_rate:.0f} img/s" if host_rate else "skipped"))
  return result
