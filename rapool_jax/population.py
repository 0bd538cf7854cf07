"""Populations: many training runs as one compiled program.

A population is P members that share a model, a stage's structural settings
(pooling, trainable rules, BatchNorm mode, schedule shape) and the
device-resident data, and differ in what can be data: their seed (initial
weights, batch order, augmentation and dropout), their cross-validation fold
(the rows of the shared split they train on) and a stage's numeric settings
(``lr``, ``lambda_class``, ``lambda_seg``), passed as traced ``[P]`` arrays.
Their train states are stacked on a leading member axis and one compiled step
(``train.resident_train_step`` per member) trains them all, in one of FORMS:

  ``vmap``    ``jax.vmap``: one batched program (a conv over per-member
              weights becomes a grouped convolution);
  ``map``     ``jax.lax.map``: a loop over members inside the program;
  ``unroll``  a Python loop inside one jitted program: P copies of the step.

Each member's batches are ``pipeline.batch_indices`` of its own seed over its
own rows, so member p trains exactly as the single run of
``member_config(config, members[p])`` does; ``member`` takes its state out of
the stack as an ordinary run's state and ``write_member`` saves it as an
ordinary workdir. A stage's stacked state is checkpointed with orbax beside
the member manifest (``members.json``) and resumes identically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rapool_jax import checkpoint as ckpt_lib
from rapool_jax import errors
from rapool_jax import losses
from rapool_jax import optim
from rapool_jax import pretrained
from rapool_jax import sharding
from rapool_jax import train
from rapool_jax.data import folds
from rapool_jax.data import pipeline
from rapool_jax.models import rapool_net

FORMS = ("vmap", "map", "unroll")
# The fastest form per backend (benchmarks/population_benchmark.py,
# benchmarks/README.md). On the 2-core CPU no form beats sequential runs:
# unroll comes closest (0.7-0.85x), vmap's grouped convolutions and lax.map's
# loop are slower still. A backend not measured gets the CPU's choice.
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


def default_form(backend: str | None = None) -> str:
  return DEFAULT_FORM.get(backend or jax.default_backend(), DEFAULT_FORM["cpu"])


def check_members(config: ml_collections.ConfigDict, members: Sequence[Member],
                  where: str = "population") -> None:
  """Raises UserError, one line naming the member and key, for a member that
  changes a structural setting, names an unknown stage or an absent fold."""
  if not members:
    raise errors.UserError(f"{where}: no members")
  num_folds = config.data.crossval.num_folds
  for i, m in enumerate(members):
    if not isinstance(m.seed, int):
      raise errors.UserError(f"{where}: member {i}: seed={m.seed!r} is not an int")
    if m.fold is not None and not 0 <= m.fold < max(num_folds, 0):
      raise errors.UserError(
          f"{where}: member {i}: fold={m.fold} is not a fold of "
          f"config.data.crossval.num_folds={num_folds}")
    for name, values in m.stages.items():
      if name not in config.stages:
        raise errors.UserError(
            f"{where}: member {i}: stages.{name}: not a stage of the config "
            f"({', '.join(config.stage_order)})")
      for key, value in values.items():
        if key not in SETTINGS:
          raise errors.UserError(
              f"{where}: member {i}: stages.{name}.{key}={value!r}: members "
              f"differ only in {', '.join(SETTINGS)}; a structural setting "
              "makes a separate population")
      stage = member_config(config, m).stages[name]
      losses.check_loss_weights(stage, f"{where}: member {i}: stages.{name}")
      optim.check_schedule(stage, f"{where}: member {i}: stages.{name}")
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
  """``{setting: float32 [P]}``: each member's numeric settings of stage ``name``."""
  stages = [member_config(config, m).stages[name] for m in members]
  return {k: np.asarray([s[k] for s in stages], np.float32) for k in SETTINGS}


# ----------------------------------------------------------------------------
# The member axis.


def stack(trees: Sequence[Any]):
  """P pytrees of one structure -> one pytree with a leading axis ``[P, ...]``."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree, index: int):
  """Member ``index``'s slice of a stacked pytree (an ordinary run's tree)."""
  return jax.tree.map(lambda x: x[index], tree)


def size(tree) -> int:
  return jax.tree.leaves(tree)[0].shape[0]


def over_members(fn, form: str):
  """``fn(carry, batch_idx, settings, split)`` of one member -> the same of
  P members: ``carry``, ``batch_idx`` and ``settings`` with a leading member
  axis, ``split`` shared."""
  check_form(form)
  if form == "vmap":
    return jax.vmap(fn, in_axes=(0, 0, 0, None))
  if form == "map":
    return lambda carry, idx, settings, split: jax.lax.map(
        lambda xs: fn(*xs, split), (carry, idx, settings))

  def unrolled(carry, idx, settings, split):
    return stack([fn(*member((carry, idx, settings), p), split)
                  for p in range(size(idx))])
  return unrolled


def check_form(form: str) -> None:
  if form not in FORMS:
    raise errors.UserError(f"config.systems.member_axis={form!r}: choose one "
                           f"of {FORMS}")


class _StageWith:
  """A stage config read through, with some settings replaced by (traced)
  values; what ``train.train_step`` and ``optim`` read a stage as."""

  def __init__(self, stage, values: dict):
    self._stage, self._values = stage, values

  def __getattr__(self, key):
    if key.startswith("_"):
      raise AttributeError(key)
    return self._values[key] if key in self._values else self._stage[key]

  def __getitem__(self, key):
    return self.__getattr__(key)

  def get(self, key, default=None):
    return self._values[key] if key in self._values else self._stage.get(
        key, default)


def member_optimizer(optimizer_config, stage, lr, params):
  """``optim.make_optimizer`` at lr 1, its updates scaled by a traced ``lr``.

  Exact up to rounding for every optimizer and schedule optim offers: each
  schedule is lr times a function of the step, and lr scales only the final
  update (SGD's momentum and AdamW's moments come before it)."""
  base = optim.make_optimizer(optimizer_config, _StageWith(stage, {"lr": 1.0}),
                              params)

  def update(grads, opt_state, params=None):
    updates, opt_state = base.update(grads, opt_state, params)
    return jax.tree.map(lambda u: (u * lr).astype(u.dtype), updates), opt_state

  return optax.GradientTransformation(base.init, update)


def member_step(carry, batch_idx, settings, split, *, config, stage):
  """One member's ``train.resident_train_step``: ``carry`` is ``{"state":
  TrainState, "key"}`` (the key as raw data), ``settings`` its ``SETTINGS``
  scalars. The state's static ``tx`` is swapped for the member's for the
  step and back after it, so the carry's structure never holds a tracer."""
  key = jax.random.wrap_key_data(carry["key"], impl=config.systems.prng_impl)
  state = carry["state"]
  tx = member_optimizer(config.optimizer, stage, settings["lr"], state.params)
  state, scalars = train.resident_train_step(
      state.replace(tx=tx), batch_idx, key, split,
      stage=_StageWith(stage, settings), data=config.data,
      mean=tuple(config.data.mean), std=tuple(config.data.std))
  return {"state": state.replace(tx=carry["state"].tx),
          "key": carry["key"]}, scalars


def population_step(config, name: str, form: str):
  """``step(carry, batch_idx [P, B], settings, split) -> (carry, scalars [P])``
  for stage ``name``, to be jitted."""
  def one(carry, idx, settings, split):
    return member_step(carry, idx, settings, split, config=config,
                       stage=config.stages[name])
  return over_members(one, form)


# ----------------------------------------------------------------------------
# Data: one shared split, each member's rows of it.


def member_rows(pooled: pipeline.Split, data_config) -> np.ndarray:
  """Rows ``[N_p]`` of ``pooled`` (sorted by id) that form the training
  split of ``data_config``'s fold, in the single run's order."""
  ids = folds.crossval_splits(pooled, data_config.crossval)[
      data_config.train_split].ids
  return np.searchsorted(pooled.ids, ids).astype(np.int32)


def training_data(config, members: Sequence[Member]):
  """``(split, rows)``: the split all members share (the pooled
  ``crossval.source_splits`` when training on a fold) and each member's rows
  of it, ``[N_p]`` int32."""
  data = config.data
  needs_masks = any(max(stage_settings(config, members, s)["lambda_seg"]) > 0
                    for s in config.stage_order)
  builder = pipeline.make_builder(data, require_train_masks=needs_masks)
  if data.train_split not in folds.CV_SPLITS:
    split = pipeline.load_split(builder, data.train_split, data.task)
    return split, [np.arange(len(split), dtype=np.int32)] * len(members)
  folds.check_crossval(data)
  pooled = folds.concat([pipeline.load_split(builder, s, data.task)
                         for s in data.crossval.source_splits])
  return pooled, [member_rows(pooled, member_config(config, m).data)
                  for m in members]


def batch_indices(members: Sequence[Member], rows, stage_index: int, step: int,
                  batch_size: int) -> np.ndarray:
  """int32 ``[P, B]``: step ``step``'s batch of each member, rows of the
  shared split (``pipeline.batch_indices`` of its seed over its own rows)."""
  return np.stack([
      r[pipeline.batch_indices(m.seed, stage_index, step, batch_size, len(r))]
      for m, r in zip(members, rows)])


# ----------------------------------------------------------------------------
# States.


def init_variables(model, config, seed: int):
  """Step 1 of the run with ``seed`` (``train.init_variables``)."""
  key = train.make_key(seed, config.systems.prng_impl)
  return train.init_variables(model, key, config.data.crop_size, config.model)


def start_carry(model, config, members: Sequence[Member], name: str,
                variables):
  """Stage ``name``'s stacked carry ``{"state": TrainState, "key"}`` from
  stacked ``variables``: fresh optimizer state and step ``[P]``, each
  member's key (raw data ``[P, ...]``)."""
  tx = optim.make_optimizer(config.optimizer, config.stages[name],
                            member(variables, 0)["params"],
                            f"config.stages.{name}")
  # The step donates its carry; the caller keeps ``variables``.
  variables = jax.tree.map(jnp.copy, variables)
  state = train.TrainState(
      step=jnp.zeros((len(members),), jnp.int32), apply_fn=model.apply,
      params=variables["params"], batch_stats=variables["batch_stats"],
      tx=tx, opt_state=jax.vmap(tx.init)(variables["params"]))
  keys = [jax.random.key_data(train.make_key(m.seed,
                                             config.systems.prng_impl))
          for m in members]
  return {"state": state, "key": jnp.stack(keys)}


def as_saved(carry) -> dict:
  """The carry as checkpointed: a single run's layout with ``[P]`` leaves,
  and the keys."""
  state = carry["state"]
  return {"variables": state.variables, "opt_state": state.opt_state,
          "step": state.step, "key": carry["key"]}


def restore_carry(mngr, step: int, target):
  """The carry checkpointed at ``step``, into ``target``'s structure."""
  saved = ckpt_lib.restore_state(mngr, step, as_saved(target))
  state = target["state"].replace(
      params=saved["variables"]["params"],
      batch_stats=saved["variables"]["batch_stats"],
      opt_state=saved["opt_state"], step=saved["step"])
  return {"state": state, "key": saved["key"]}


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


def set_input_normalisation(config) -> None:
  """ImageNet weights define the input normalisation (as ``run.setup``)."""
  if (config.model.pretrained
      and config.model.get("backbone", "resnet") == "resnet"):
    prep = pretrained.preprocessing_for(config.model.pretrained)
    config.data.mean, config.data.std = tuple(prep.mean), tuple(prep.std)


class Population:
  """P members of one config on one device-resident split.

  ``data``: ``(split, rows)`` as ``training_data`` returns (loaded from
  the config when None); ``form``: one of FORMS (default:
  ``config.systems.member_axis`` where set, else ``default_form()``).
  """

  def __init__(self, config, members: Sequence[Member], *, form: str = "",
               data=None):
    check_members(config, members)
    self.config, self.members = config, tuple(members)
    config.model.num_classes = pipeline.num_classes(config.data.task)
    set_input_normalisation(config)
    self.model = rapool_net.build_model(config.model, config.systems)
    self.form = form or config.systems.get("member_axis", "") or default_form()
    check_form(self.form)
    self.mesh = sharding.make_mesh()
    host, self.rows = data if data is not None else training_data(
        config, members)
    self.split = sharding.put_replicated(
        {"images": host.images, "masks": host.masks, "labels": host.labels,
         "has_mask": host.has_mask}, self.mesh)

  def __len__(self):
    return len(self.members)

  def init_variables(self):
    """Stacked Step-1 variables, member p's from its own seed."""
    return stack([init_variables(self.model, self.config, m.seed)
                  for m in self.members])

  def start(self, name: str, variables):
    """Stage ``name``'s fresh carry from stacked ``variables``."""
    return sharding.put_replicated(start_carry(
        self.model, self.config, self.members, name, variables), self.mesh)

  def settings(self, name: str) -> dict:
    return sharding.put_replicated(
        stage_settings(self.config, self.members, name), self.mesh)

  def batch(self, stage_index: int, step: int):
    return sharding.put_replicated(batch_indices(
        self.members, self.rows, stage_index, step,
        self.config.train.batch_size), self.mesh)

  def compile(self, name: str, carry, stage_index: int = 0):
    """``(compiled, carry, seconds)``: stage ``name``'s population step
    compiled ahead (state donated, laid out as ``config.systems`` says) and
    the carry placed for it."""
    t0 = time.perf_counter()
    compiled, carry = sharding.compile_train_step(
        population_step(self.config, name, self.form), carry,
        (self.batch(stage_index, 0), self.settings(name), self.split),
        sharding.replicated(self.mesh),
        layout=self.config.systems.state_layout,
        donate=self.config.systems.donate_state)
    return compiled, carry, time.perf_counter() - t0

  def run_stage(self, workdir: str, index: int, name: str, variables,
                stop_at: int | None = None):
    """Trains stage ``name`` (batch order ``index``) from stacked
    ``variables`` or its checkpoint in ``workdir``, up to ``max_steps`` (or
    ``stop_at``, checkpointed there). Returns ``(carry, meta)``."""
    check_manifest(workdir, self.members)
    stage = self.config.stages[name]
    stop = stage.max_steps if stop_at is None else min(stop_at, stage.max_steps)
    with ckpt_lib.manager(workdir, name,
                          self.config.train.keep_checkpoints) as mngr:
      carry = self.start(name, variables)
      meta = {"stage": name, "step": 0, "done": False, "form": self.form,
              "members": [m.as_dict() for m in self.members]}
      step, saved = ckpt_lib.latest_meta(mngr)
      if step is not None:
        print(f"[{name}] population resumed from checkpoint at step {step}",
              flush=True)
        carry, meta = restore_carry(mngr, step, carry), saved
      if not meta["done"]:
        carry = _train(self, mngr, index, name, carry, meta, stop)
        meta["done"] = meta["step"] >= stage.max_steps
        ckpt_lib.save(mngr, int(meta["step"]) + int(meta["done"]),
                      as_saved(carry), meta)
    return carry, meta


def _train(pop: Population, mngr, index: int, name: str, carry, meta: dict,
           stop: int):
  """Steps ``meta["step"]``..``stop - 1``; logs member-img/s and ETA, and
  checkpoints every ``train.checkpoint_every`` steps."""
  train_config = pop.config.train
  settings = pop.settings(name)
  start = int(meta["step"])
  compiled, t_first = None, None
  for t in range(start, stop):
    if compiled is None:
      compiled, carry, compile_s = pop.compile(name, carry, index)
      print(f"[{name}] {len(pop)} members ({pop.form}): compiled in "
            f"{compile_s:.1f} s", flush=True)
    carry, scalars = compiled(carry, pop.batch(index, t), settings, pop.split)
    if t == start:
      jax.block_until_ready(scalars)
      t_first = time.perf_counter()
    meta["step"] = t + 1
    if (t + 1) % train_config.log_every == 0 or t + 1 == stop:
      _log(pop, name, t + 1, jax.device_get(scalars), t_first, start)
    if (t + 1) % train_config.checkpoint_every == 0 and t + 1 < stop:
      ckpt_lib.save(mngr, t + 1, as_saved(carry), meta)
  return carry


def _log(pop: Population, name: str, step: int, scalars: dict,
         t_first: float, start: int) -> None:
  """One progress line: mean loss over members, member-img/s, ETA."""
  loss = np.asarray(scalars["loss"])
  if not np.isfinite(loss).all():
    bad = int(np.flatnonzero(~np.isfinite(loss))[0])
    raise FloatingPointError(
        f"[{name}] member {bad} ({pop.members[bad].as_dict()}): loss is "
        f"{loss[bad]} at step {step}; lower its lr")
  max_steps = pop.config.stages[name].max_steps
  done = step - start - 1  # the first step's time includes compilation
  seconds = time.perf_counter() - t_first
  rate = done * len(pop) * pop.config.train.batch_size / max(seconds, 1e-9)
  eta = seconds / done * (max_steps - step) if done else float("nan")
  print(f"[{name}] step {step}/{max_steps}: loss {loss.mean():.4f} "
        f"(members {loss.min():.4f}..{loss.max():.4f}), "
        f"{rate:.1f} member-img/s, ETA {eta:.0f} s", flush=True)


# ----------------------------------------------------------------------------
# Members out of the stack.


def write_member(workdir: str, config, member_: Member, name: str, state,
                 meta: dict) -> None:
  """Saves one member's stage state (``member(carry["state"], p)``, a
  ``TrainState``) as an ordinary run's workdir: its ``config.json`` and
  stage checkpoint, which ``predict`` and the other tools read as they read
  a single run's."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(member_config(config, member_).to_json_best_effort(indent=2))
  single_meta = {"stage": name, "step": int(state.step),
                 "done": bool(meta["done"]),
                 "plateau": {"best": None, "bad": 0, "history": []},
                 "finished": {}, "population_member": member_.as_dict()}
  with ckpt_lib.manager(workdir, name) as mngr:
    train.save_train_state(mngr, int(state.step) + int(meta["done"]), state,
                           single_meta)
