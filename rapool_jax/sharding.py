"""Data parallelism over a ``data`` mesh axis, from one device to many hosts.

Parameters, optimizer state and the device-resident data set are replicated;
each batch is split over ``data`` (each process feeds its own slice), and XLA
inserts the gradient and BatchNorm all-reduces. Also: the train step compiled
ahead of its first call, with the state layout and donation of
``config.systems``; a split too large for device memory streamed from the host.
"""

from __future__ import annotations

import jax
from jax.experimental.layout import Format
from jax.experimental.layout import Layout
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from rapool_jax import errors


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process, axis ``data``."""
  # Auto axes: XLA propagates the batch sharding through the gather and the
  # network (explicit axes would need an out_sharding on every gather).
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# How a jitted step is told to lay out the train state in device memory.
STATE_LAYOUTS = ("auto", "default")


def state_formats(state, sharding, layout: str):
  """Per leaf of ``state``: ``sharding``, with a device layout of XLA's choice
  (``layout="auto"``) or row-major (``"default"``).

  Why "auto": cuDNN reads and writes conv kernels as OHWI, flax stores them
  as HWIO. Row-major HWIO state makes XLA:GPU transpose every kernel's
  update, and a transposing fusion cannot update a donated buffer in place,
  so XLA adds a copy per kernel (and per momentum). In XLA's own layout the
  state is updated where it lies. The values and shapes are the same either
  way; ``jax.device_get``, orbax and other jits read any layout.
  """
  check_state_layout(layout)
  placement = Format(Layout.AUTO, sharding) if layout == "auto" else sharding
  return jax.tree.map(lambda _: placement, state)


def check_state_layout(layout: str) -> None:
  errors.check_choice("config.systems.state_layout", layout, STATE_LAYOUTS)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def check_batch_size(batch_size: int, mesh, name: str = "train.batch_size"):
  n = mesh.devices.size
  if batch_size % n:
    raise errors.UserError(
        f"config.{name}={batch_size} is not divisible by the "
        f"{n} devices of the mesh")


def put_replicated(tree, mesh):
  """Host arrays -> arrays replicated on every device (same value on every process)."""
  return jax.device_put(tree, replicated(mesh))


def put_global_batch(batch: np.ndarray, mesh) -> jax.Array:
  """A global batch ``[B, ...]`` (identical on every process) sharded over
  ``data``; each process hands over only the rows its own devices hold."""
  per_process = batch.shape[0] // jax.process_count()
  local = batch[jax.process_index() * per_process:][:per_process]
  return jax.make_array_from_process_local_data(batch_sharding(mesh), local,
                                                batch.shape)


def to_host(x) -> np.ndarray:
  """A replicated (or fully addressable) array as a numpy array on this process."""
  if getattr(x, "is_fully_replicated", False):
    return np.asarray(x.addressable_data(0))
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def lower_train_step(step, state, args: tuple, state_sharding, *,
                     layout: str, donate: bool):
  """``step(state, *args) -> (state, scalars)`` jitted and lowered.

  The state is placed by ``state_formats(state, state_sharding, layout)`` (in
  and out, so a donated state is updated where it lies); the other arguments
  keep their own shardings. ``state`` and ``args`` may be arrays or
  ``jax.ShapeDtypeStruct``s.
  """
  formats = state_formats(state, state_sharding, layout)
  jitted = jax.jit(step, in_shardings=(formats,) + (None,) * len(args),
                   out_shardings=(formats, state_sharding),
                   donate_argnums=(0,) if donate else ())
  # Layout.AUTO takes shapes, not arrays, whose layout is already fixed.
  abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=state_sharding),
      state)
  return jitted.lower(abstract, *args)


def compile_train_step(step, state, args: tuple, state_sharding, *,
                       layout: str, donate: bool):
  """``lower_train_step`` compiled; returns ``(compiled, state)``, the state
  moved into the layouts that ``compiled`` reads. Call
  ``compiled(state, *args)`` with arguments placed like ``args``."""
  compiled = lower_train_step(step, state, args, state_sharding, layout=layout,
                              donate=donate).compile()
  return compiled, place_state(compiled, state)


def place_state(compiled, state):
  """``state`` in the device layouts that ``compiled`` reads (consumes it)."""
  return jax.jit(lambda s: s, out_shardings=compiled.input_formats[0][0],
                 donate_argnums=0)(state)


def stream_host_batches(host: dict, indices, start: int, stop: int,
                        batch_size: int, mesh):
  """Yields steps ``start``..``stop - 1``'s batches: rows ``indices(t)`` of the
  ``host`` arrays (uint8 ``images [N, S, S, 3]``, ...), sharded over ``data``.
  Each process gathers only its own rows, in grain's background threads, a
  few steps ahead of training."""
  import grain  # pylint: disable=g-import-not-at-top
  n_proc, rank = jax.process_count(), jax.process_index()
  per_process = batch_size // n_proc

  def gather(t):
    local = indices(int(t))[rank * per_process:(rank + 1) * per_process]
    return {k: v[local] for k, v in host.items()}

  stream = grain.MapDataset.range(start, stop).map(gather).to_iter_dataset(
      grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
  for local in stream:
    yield {k: jax.make_array_from_process_local_data(
        batch_sharding(mesh), v, (batch_size,) + v.shape[1:])
           for k, v in local.items()}
