"""Checkpoints with orbax: one CheckpointManager per stage under
``workdir/checkpoints/<stage>``, each checkpoint the train state (``state``)
and a JSON record (``meta``: progress, plateau tracker; ``done`` on a stage's
last). Orbax writes atomically, so a run killed while saving resumes from the
previous complete checkpoint; two writers are kept apart by ``hold_workdir``.
A checkpoint whose files were damaged later stops the run with one line that
names it (``UnreadableCheckpoint``), checked against the digest in its meta.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import sys
import time
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from rapool_jax import errors
from rapool_jax import sharding

LOCK_FILE = "writer.lock"


def stage_dir(workdir: str, stage_name: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints", stage_name)


def manager(workdir: str, stage_name: str, keep: int = 2) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      stage_dir(workdir, stage_name),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
      item_names=("state", "meta"))


class UnreadableCheckpoint(errors.UserError):
  """A checkpoint whose files no longer read back as they were written."""


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  """Saves synchronously (so a SIGKILL right after loses nothing), with the
  state's digest in ``meta``."""
  meta = {**meta, "digest": digest(state)}
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=True)
  mngr.wait_until_finished()


def latest_meta(mngr: ocp.CheckpointManager) -> tuple[int | None, dict | None]:
  step = mngr.latest_step()
  if step is None:
    return None, None
  with reading(mngr, step):
    restored = mngr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))
  return step, restored["meta"]


def restore_state(mngr: ocp.CheckpointManager, step: int, target):
  """Restores the state at ``step`` into the structure/shardings of ``target``."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  with reading(mngr, step):
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  check_digest(mngr, step, restored["state"], restored["meta"])
  return restored["state"]


# ----------------------------------------------------------------------------
# Damaged checkpoints. Orbax's zstd chunks carry no checksum: overwritten
# bytes of the weights decode, without an error, to other weights (NaN where
# tried on a tiny run), so the state's digest is kept in its meta.


def digest(tree: dict) -> dict:
  """``{key: CRC-32 hex}`` of each top-level entry's bytes, leaf by leaf
  (on the host, as orbax saves them: a jitted sum would compile a program
  per state structure, seconds on a CPU)."""
  out = {}
  for key, value in tree.items():
    crc = 0
    for leaf in jax.tree.leaves(value):
      crc = zlib.crc32(np.ascontiguousarray(sharding.to_host(leaf)).view(
          np.uint8), crc)
    out[key] = f"{crc:08x}"
  return out


def check_digest(mngr, step: int, restored: dict, meta: dict) -> None:
  """Raises ``UnreadableCheckpoint`` where ``restored`` differs from what
  was saved (checkpoints from before the digest are not checked)."""
  saved = (meta or {}).get("digest") or {}
  now = digest(restored)
  if changed := sorted(k for k in now.keys() & saved.keys()
                       if now[k] != saved[k]):
    raise unreadable(mngr, step, f"its {', '.join(changed)} differ from what "
                     "was written")


def unreadable(mngr, step: int, why: str) -> UnreadableCheckpoint:
  """The one line for a damaged checkpoint: stage, step and what to do."""
  folder = os.fspath(mngr.directory)
  earlier = [s for s in mngr.all_steps() if s < step]
  then = (f"resumes the stage from its checkpoint at step {max(earlier)}"
          if earlier else "trains the stage again from its start")
  return UnreadableCheckpoint(
      f"{os.path.join(folder, str(step))}: the checkpoint of stage "
      f"{os.path.basename(folder)!r} at step {step} does not read back "
      f"({why}); delete that folder, and the training command {then}")


def damaged(e: Exception) -> bool:
  """Whether a read error comes from the files (TensorStore's errors start
  with their status, such as ``DATA_LOSS:``) rather than from the code."""
  return (isinstance(e, (OSError, UnicodeError, json.JSONDecodeError))
          or re.match(r"[A-Z][A-Z_]+: ", str(e)) is not None)


def _brief(e: Exception) -> str:
  """A read error's type and innermost causes: TensorStore's messages nest
  every layer's error and end in kilobytes of JSON spec."""
  parts = errors.one_line(e).split(" [tensorstore_spec")[0].split(": ")
  return ": ".join(parts if len(parts) <= 5 else [parts[0], "...", *parts[-3:]])


@contextlib.contextmanager
def reading(mngr, step: int):
  """Reads checkpoint ``step`` of ``mngr``; a damaged one is one line."""
  previous = sys.unraisablehook
  # After a failed read, TensorStore's reads still in flight call back into
  # orbax's closed event loop, each an unraisable "Event loop is closed" on
  # stderr: dropped, as the run stops on the failure itself.
  sys.unraisablehook = lambda u: (
      None if "Event loop is closed" in str(u.exc_value) else previous(u))
  try:
    yield
  except (ValueError, OSError) as e:
    if not damaged(e):
      raise
    raise unreadable(mngr, step, _brief(e)) from None
  sys.unraisablehook = previous  # kept after a failure: callbacks may follow


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
    with reading(mngr, step):
      restored = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              item=abstract, partial_restore=True,
              restore_args=ocp.checkpoint_utils.construct_restore_args(
                  abstract))))
    check_digest(mngr, step, restored["state"], meta)
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
