"""Populations: many training runs as one compiled program.

P members share a model, a stage's structure (pooling, trainable rules,
BatchNorm mode, schedule shape) and the device-resident data; they differ in
seed (initial weights, batch order, augmentation, dropout), cross-validation
fold (their rows of the shared split) and a stage's ``SETTINGS``, passed as
traced ``[P]`` arrays. Their ``TrainState``s are stacked on a leading member
axis and one compiled step trains them all, in one of FORMS: ``vmap`` (one
batched program; a conv over per-member weights becomes a grouped
convolution), ``map`` (``lax.map``, a loop inside the program) or ``unroll``
(P copies of the step in one program). Member p trains as the single run of
``member_config(config, members[p])`` does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rapool_jax import checkpoint as ckpt_lib
from rapool_jax import checks
from rapool_jax import errors
from rapool_jax import losses
from rapool_jax import optim
from rapool_jax import progress
from rapool_jax import sharding
from rapool_jax import train
from rapool_jax.data import folds
from rapool_jax.data import pipeline
from rapool_jax.models import rapool_net

FORMS = ("vmap", "map", "unroll")
# The fastest form per backend (benchmarks/population_benchmark.py,
# benchmarks/README.md). On the 2-core CPU no form beats sequential runs:
# unroll comes closest (0.72-0.99x), vmap's grouped convolutions and
# lax.map's loop are slower still. A backend not measured gets the CPU's.
DEFAULT_FORM = {"cpu": "unroll"}
# The stage settings a member may change: numbers that enter the step as data.
SETTINGS = ("lr", "lambda_class", "lambda_seg")
MANIFEST = "members.json"


@dataclasses.dataclass(frozen=True)
class Member:
  """One run of a population: its ``seed``, its cross-validation ``fold``
  (None: the config's) and per-stage settings ``{stage: {key: value}}``."""

  seed: int
  fold: int | None = None
  stages: dict = dataclasses.field(default_factory=dict)

  def as_dict(self) -> dict:
    return {"seed": self.seed, "fold": self.fold,
            "stages": {s: dict(v) for s, v in self.stages.items()}}


def check_members(config: ml_collections.ConfigDict,
                  members: Sequence[Member]) -> None:
  """Raises UserError, one line naming the member and key, for a member that
  changes a structural setting, names an unknown stage or an absent fold, or
  repeats another."""
  if not members:
    raise errors.UserError("population: no members")
  if config.systems.get("member_axis", ""):  # before any data is loaded
    errors.check_choice("config.systems.member_axis",
                        config.systems.member_axis, FORMS)
  num_folds = config.data.crossval.num_folds
  for i, m in enumerate(members):
    where = f"population: member {i}"
    if (first := members.index(m)) < i:  # it would train member first's run
      raise errors.UserError(f"{where}: {m.as_dict()} is member {first} "
                             "again; give each member once")
    if not isinstance(m.seed, int):
      raise errors.UserError(f"{where}: seed={m.seed!r} is not an int")
    if m.fold is not None and not 0 <= m.fold < max(num_folds, 0):
      raise errors.UserError(
          f"{where}: fold={m.fold} is not a fold of "
          f"config.data.crossval.num_folds={num_folds}")
    for name, values in m.stages.items():
      if name not in config.stages:
        raise errors.UserError(
            f"{where}: stages.{name}: not a stage of the config "
            f"({', '.join(config.stage_order)})")
      for key, value in values.items():
        if key not in SETTINGS:
          raise errors.UserError(
              f"{where}: stages.{name}.{key}={value!r}: members differ only "
              f"in {', '.join(SETTINGS)}; a structural setting makes a "
              "separate population")
      stage = member_config(config, m).stages[name]
      losses.check_loss_weights(stage, f"{where}: stages.{name}")
      optim.check_schedule(stage, f"{where}: stages.{name}")
  for name in config.stage_order:
    if config.stages[name].plateau.metric:
      raise errors.UserError(
          f"config.stages.{name}.plateau.metric="
          f"{config.stages[name].plateau.metric!r}: a population trains "
          "every member for max_steps; set it to ''")


def member_config(config: ml_collections.ConfigDict,
                  member: Member) -> ml_collections.ConfigDict:
  """The config of the single run that ``member`` reproduces."""
  c = config.copy_and_resolve_references()
  c.seed = member.seed
  if member.fold is not None:
    c.data.crossval.fold = member.fold
  for name, values in member.stages.items():
    for key, value in values.items():
      c.stages[name][key] = float(value)
  return c


def stage_settings(config, members: Sequence[Member], name: str) -> dict:
  """``{setting: float32 [P]}``: each member's settings of stage ``name``."""
  stages = [member_config(config, m).stages[name] for m in members]
  return {k: np.asarray([s[k] for s in stages], np.float32) for k in SETTINGS}


# ----------------------------------------------------------------------------
# The member axis.


def stack(trees: Sequence[Any]):
  """P pytrees of one structure -> one with a leading axis ``[P, ...]``."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree, index: int):
  """Member ``index``'s slice of a stacked pytree (an ordinary run's tree)."""
  return jax.tree.map(lambda x: x[index], tree)


def over_members(fn, form: str):
  """``fn(*per_member, shared)`` of one member -> the same of P members:
  every argument but the last with a leading member axis."""
  errors.check_choice("config.systems.member_axis", form, FORMS)
  if form == "vmap":
    return lambda *args: jax.vmap(fn, in_axes=(0,) * (len(args) - 1) + (None,))(
        *args)
  if form == "map":
    return lambda *args: jax.lax.map(lambda xs: fn(*xs, args[-1]), args[:-1])

  def unrolled(*args):
    count = jax.tree.leaves(args[0])[0].shape[0]
    return stack([fn(*member(args[:-1], p), args[-1]) for p in range(count)])
  return unrolled


def stage_with(stage, values: dict) -> types.SimpleNamespace:
  """Stage config ``stage`` with some settings replaced by (traced) values,
  as ``train.train_step`` and ``optim`` read a stage."""
  return types.SimpleNamespace(**{**stage, **values})


def member_optimizer(optimizer_config, stage, lr, params):
  """``optim.make_optimizer`` at lr 1, its updates scaled by a traced ``lr``.

  Exact up to rounding for every optimizer and schedule optim offers: each
  schedule is lr times a function of the step, and lr scales only the final
  update (SGD's momentum and AdamW's moments come before it)."""
  base = optim.make_optimizer(optimizer_config, stage_with(stage, {"lr": 1.0}),
                              params)

  def update(grads, opt_state, params=None):
    updates, opt_state = base.update(grads, opt_state, params)
    return jax.tree.map(lambda u: (u * lr).astype(u.dtype), updates), opt_state

  return optax.GradientTransformation(base.init, update)


def population_step(config, name: str, form: str):
  """``step(state, batch_idx [P, B], keys [P], settings, split)`` ->
  ``(state, scalars)`` for stage ``name``: the members' mean of each scalar,
  and ``loss_max``, the worst member's loss."""
  stage = config.stages[name]

  def one(state, batch_idx, key, settings, split):
    # The static ``tx`` is the member's for the step, then back to the
    # stack's, so the carry's structure never holds a tracer.
    tx = member_optimizer(config.optimizer, stage, settings["lr"],
                          state.params)
    new, scalars = train.resident_train_step(
        state.replace(tx=tx), batch_idx, key, split,
        stage=stage_with(stage, settings), data=config.data,
        mean=tuple(config.data.mean), std=tuple(config.data.std))
    return new.replace(tx=state.tx), scalars

  def step(*args):
    state, scalars = over_members(one, form)(*args)
    return state, {**jax.tree.map(jnp.mean, scalars),
                   "loss_max": jnp.max(scalars["loss"])}
  return step


# ----------------------------------------------------------------------------
# Data: one shared split, each member's rows of it.


def member_rows(pooled: pipeline.Split, data_config) -> np.ndarray:
  """Rows ``[N_p]`` of ``pooled`` (sorted by id) that form the training
  split of ``data_config``'s fold, in the single run's order."""
  ids = folds.crossval_splits(pooled, data_config.crossval)[
      data_config.train_split].ids
  return np.searchsorted(pooled.ids, ids).astype(np.int32)


def batch_indices(members: Sequence[Member], rows, stage_index: int, step: int,
                  batch_size: int) -> np.ndarray:
  """int32 ``[P, B]``: step ``step``'s batch of each member, rows of the
  shared split (``pipeline.batch_indices`` of its seed over its own rows)."""
  return np.stack([
      r[pipeline.batch_indices(m.seed, stage_index, step, batch_size, len(r))]
      for m, r in zip(members, rows)])


def check_manifest(workdir: str, members: Sequence[Member]) -> None:
  """Writes ``workdir/members.json``, or checks that the one there names the
  same members (a population resumes only as itself)."""
  path = os.path.join(workdir, MANIFEST)
  want = [m.as_dict() for m in members]
  if not os.path.exists(path):
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      json.dump({"members": want}, f, indent=2)
    return
  with open(path) as f:
    saved = json.load(f)["members"]
  if saved != want:
    i = next((i for i, (a, b) in enumerate(zip(saved, want)) if a != b),
             min(len(saved), len(want)))
    raise errors.UserError(
        f"{path}: the population there has {len(saved)} members, member {i} "
        f"{saved[i] if i < len(saved) else None} (now {len(want)}, "
        f"{want[i] if i < len(want) else None}); use a new workdir")


# ----------------------------------------------------------------------------
# Training.


class Population:
  """P members of one config (input normalisation set, as ``run.setup``
  leaves it) on one device-resident split: ``data`` is ``(split, rows)``,
  each member's rows ``[N_p]`` of ``split``. ``form``: one of FORMS
  (default: ``config.systems.member_axis`` where set, else the backend's)."""

  def __init__(self, config, members: Sequence[Member], data, *,
               form: str = ""):
    check_members(config, members)
    self.config, self.members = checks.resolve_config(config), tuple(members)
    self.model = rapool_net.build_model(config.model, config.systems)
    self.form = form or config.systems.get("member_axis", "") or (
        DEFAULT_FORM.get(jax.default_backend(), DEFAULT_FORM["cpu"]))
    errors.check_choice("config.systems.member_axis", self.form, FORMS)
    self.mesh = sharding.make_mesh()
    host, self.rows = data
    self.split = sharding.put_replicated(
        {"images": host.images, "masks": host.masks, "labels": host.labels,
         "has_mask": host.has_mask}, self.mesh)
    self.keys = sharding.put_replicated(jnp.stack(
        [train.make_key(m.seed, config.systems.prng_impl) for m in members]),
                                        self.mesh)

  def init_variables(self):
    """Stacked Step-1 variables, member p's from its own seed."""
    return stack([train.init_variables(
        self.model, train.make_key(m.seed, self.config.systems.prng_impl),
        self.config.data.crop_size, self.config.model) for m in self.members])

  def start(self, name: str, variables) -> train.TrainState:
    """Stage ``name``'s stacked state from stacked ``variables``."""
    tx = optim.make_optimizer(self.config.optimizer, self.config.stages[name],
                              member(variables, 0)["params"],
                              f"config.stages.{name}")
    return train.create_train_state(self.model, variables, tx, self.mesh,
                                    members=len(self.members))

  def step_args(self, name: str, stream: int, start: int, stop: int):
    """Yields steps ``start``..``stop - 1``'s arguments after the state
    (batches of order ``stream``)."""
    settings = sharding.put_replicated(
        stage_settings(self.config, self.members, name), self.mesh)
    for t in range(start, stop):
      idx = batch_indices(self.members, self.rows, stream, t,
                          self.config.train.batch_size)
      yield (sharding.put_replicated(idx, self.mesh), self.keys, settings,
             self.split)

  def run_stage(self, workdir: str, stream: int, name: str, variables,
                finished: dict | None = None):
    """Stage ``name`` from stacked ``variables`` or its checkpoint (beside
    ``members.json``), on batch order ``stream`` (``run.batch_stream``);
    returns the stacked final variables and the stage's meta. Progress
    lines count member-images; TensorBoard (``workdir/tensorboard``) shows
    the members' mean of each scalar, the largest member loss and lr."""
    check_manifest(workdir, self.members)
    config = self.config.copy_and_resolve_references()
    config.train.batch_size *= len(self.members)  # img/s: member-img/s
    return train.train_stage(
        self.start(name, variables), population_step(config, name, self.form),
        lambda start, stop: self.step_args(name, stream, start, stop),
        name=name, config=config, workdir=workdir, mesh=self.mesh,
        finished=finished or {},
        writer=progress.MetricWriter(os.path.join(workdir, "tensorboard")))

  def write_member(self, workdir: str, name: str, variables, index: int,
                   out: str) -> None:
    """Member ``index``'s last checkpoint of stage ``name`` in ``workdir``
    (``variables``: any stacked variables, for shapes) saved as an ordinary
    run's workdir ``out``: ``config.json`` and the stage checkpoint (kept
    where a resumed population wrote it already)."""
    os.makedirs(out, exist_ok=True)
    with ckpt_lib.manager(out, name) as out_mngr:
      if ckpt_lib.latest_meta(out_mngr)[0] is not None:
        return
      with ckpt_lib.manager(workdir, name) as mngr:
        step, meta = ckpt_lib.latest_meta(mngr)
        state = train.restore_train_state(mngr, step,
                                          self.start(name, variables))
      with open(os.path.join(out, "config.json"), "w") as f:
        f.write(member_config(self.config, self.members[index])
                .to_json_best_effort(indent=2))
      meta = {**meta, "population_member": self.members[index].as_dict()}
      train.save_train_state(out_mngr, step, member(state, index), meta)
