"""Data parallelism over a ``data`` mesh axis, from one device to many hosts.

Parameters, optimizer state and the device-resident data set are replicated;
each batch of example indices is split over the ``data`` axis, so the gather,
augmentation, forward and backward of a step run on each device's share and
XLA inserts the gradient and BatchNorm all-reduces. The same code runs on one
CPU, eight GPUs or many hosts (each process feeds its own slice of the batch).
"""

from __future__ import annotations

import jax
from jax.experimental.layout import Format
from jax.experimental.layout import Layout
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np


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
  if layout not in STATE_LAYOUTS:
    raise ValueError(f"config.systems.state_layout={layout!r}: choose one of "
                     f"{STATE_LAYOUTS}")


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def check_batch_size(batch_size: int, mesh, name: str = "train.batch_size"):
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f"config.{name}={batch_size} is not divisible by the "
                     f"{n} devices of the mesh")


def put_replicated(tree, mesh):
  """Host arrays -> arrays replicated on every device (same value on every process)."""
  return jax.device_put(tree, replicated(mesh))


def put_global_batch(batch: np.ndarray, mesh) -> jax.Array:
  """A global batch ``[B, ...]`` (identical on every process) sharded over ``data``.

  Each process hands over only the rows its own devices hold.
  """
  sharding = batch_sharding(mesh)
  n_proc, index = jax.process_count(), jax.process_index()
  per_process = batch.shape[0] // n_proc
  local = batch[index * per_process:(index + 1) * per_process]
  return jax.make_array_from_process_local_data(sharding, local, batch.shape)


def to_host(x) -> np.ndarray:
  """A replicated (or fully addressable) array as a numpy array on this process."""
  if getattr(x, "is_fully_replicated", False):
    return np.asarray(x.addressable_data(0))
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
