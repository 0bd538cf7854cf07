"""Checkpoints with orbax: one CheckpointManager per stage under ``workdir/checkpoints/<stage>``.

Each checkpoint holds the train state (``state``) and a small JSON record
(``meta``: stage progress, plateau tracker, finished results). A stage's last
checkpoint has ``meta["done"] = True``; later stages start from its variables,
and the sweeps in ``launch/`` start from it too (e.g. Step 4 from Step 3).
Orbax writes atomically (a temporary folder renamed at the end), so a run
killed while saving resumes from the previous complete checkpoint.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


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
  with manager(workdir, stage_name) as mngr:
    return _restore_variables(mngr, target_variables)


def _restore_variables(mngr, target_variables):
  step, meta = latest_meta(mngr)
  if step is None or not meta.get("done"):
    return None
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, "sharding", None) or device),
      target_variables)
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item={"variables": abstract},
          restore_args=ocp.checkpoint_utils.construct_restore_args(
              {"variables": abstract}),
          partial_restore=True)))
  return restored["state"]["variables"]
