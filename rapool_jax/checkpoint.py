"""Checkpoints with orbax: one CheckpointManager per stage under
``workdir/checkpoints/<stage>``, each checkpoint the train state (``state``)
and a JSON record (``meta``: progress, plateau tracker; ``done`` on a stage's
last). Orbax writes atomically, so a run killed while saving resumes from the
previous complete checkpoint; two writers are kept apart by ``hold_workdir``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time

import jax
import orbax.checkpoint as ocp

from rapool_jax import errors

LOCK_FILE = "writer.lock"


def stage_dir(workdir: str, stage_name: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints", stage_name)


def manager(workdir: str, stage_name: str, keep: int = 2) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      stage_dir(workdir, stage_name),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
      item_names=("state", "meta"))


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  """Saves synchronously (so a SIGKILL right after loses nothing)."""
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=True)
  mngr.wait_until_finished()


def latest_meta(mngr: ocp.CheckpointManager) -> tuple[int | None, dict | None]:
  step = mngr.latest_step()
  if step is None:
    return None, None
  restored = mngr.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))
  return step, restored["meta"]


def restore_state(mngr: ocp.CheckpointManager, step: int, target):
  """Restores the state at ``step`` into the structure/shardings of ``target``."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))
  return restored["state"]


def restore_variables(workdir: str, stage_name: str, target_variables):
  """The final ``{'params', 'batch_stats'}`` of a finished stage, or None."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = {"variables": jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=getattr(x, "sharding", None) or device),
      target_variables)}
  with manager(workdir, stage_name) as mngr:
    step, meta = latest_meta(mngr)
    if step is None or not meta.get("done"):
      return None
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=abstract, partial_restore=True,
            restore_args=ocp.checkpoint_utils.construct_restore_args(
                abstract))))
  return restored["state"]["variables"]


@contextlib.contextmanager
def hold_workdir(workdir: str):
  """Holds an exclusive lock on ``workdir`` for the body of the ``with``.

  An flock on ``workdir/writer.lock``: the OS drops it when the process ends,
  however it ends, so a killed run leaves nothing to clean up and the same
  command takes it again. A second writer stops with one line naming the
  holder's pid and host. On several hosts only process 0 writes the workdir's
  files, so only it locks: the run's other processes would find its lock and
  stop.
  """
  if jax.process_index() != 0:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise errors.UserError(_busy(workdir, "use another --workdir or wait "
                                   "for it to end")) from None
    except OSError as e:  # a file system without locks (some NFS/Lustre mounts)
      print(f"warning: cannot lock {workdir} ({errors.one_line(e)}); nothing "
            "stops a second run from writing it too", file=sys.stderr)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}
                            ).encode())
    yield
  finally:
    os.close(fd)  # releases the lock


def check_not_being_written(workdir: str) -> None:
  """Raises the one-line error if a run holds ``workdir``'s lock now."""
  path = os.path.join(workdir, LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDONLY)
  except FileNotFoundError:
    return
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    raise errors.UserError(_busy(workdir, "predict reads finished runs only; "
                                 "wait for it to end")) from None
  except OSError:  # no locks on this file system: nothing to ask
    pass
  finally:
    os.close(fd)


def _busy(workdir: str, advice: str) -> str:
  """The one line for a locked ``workdir``, with the holder from its file."""
  holder = {}
  # The holder writes its pid right after it locks; give it a moment.
  for _ in range(20):
    try:
      with open(os.path.join(workdir, LOCK_FILE)) as f:
        holder = json.load(f)
      holder = holder if isinstance(holder, dict) else {}
      break
    except (OSError, ValueError):
      time.sleep(0.05)
  return (f"{workdir} is being written by another run (pid "
          f"{holder.get('pid', '?')} on host {holder.get('host', '?')}, since "
          f"{holder.get('since', '?')}); {advice}")
