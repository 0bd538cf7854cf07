"""Training: the train step, the stage loop and the whole job.

``train_and_evaluate(config, workdir)`` is the whole job: Step 1 initialisation,
each configured stage (with its own pooling, loss weights, frozen parameters and
schedule), RankOpt on the pooled training features, evaluation of every
reported model on the evaluation split, and the report (table, ROC, CAMs).
Every stage checkpoints periodically and at its end; a restarted run picks up
where the last checkpoint left off and ends with the same results.
Checks live in ``checks.py``, evaluation and RankOpt in ``evaluate.py``,
compilation, layouts and host streaming in ``sharding.py``.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rapool_jax import checkpoint as ckpt_lib
from rapool_jax import checks
from rapool_jax import evaluate
from rapool_jax import losses
from rapool_jax import optim
from rapool_jax import provenance
from rapool_jax import report as report_lib
from rapool_jax import sharding
from rapool_jax.data import folds
from rapool_jax.data import pipeline
from rapool_jax.models import rapool_net


# ----------------------------------------------------------------------------
# Steps (pure functions, jitted by the caller).


def augmented_inputs(key, batch, data, mean, std):
  """uint8 ``images [B, S, S, 3]``, ``masks [B, S, S]`` -> normalised float32
  crops ``[B, crop, crop, 3]`` and masks ``[B, crop, crop]``, randomly
  cropped, rotated and flipped together (``data``: the data config).

  With ``batch["rows"] [B]``, images and masks are a whole split
  ``[N, S, S, ...]`` and the batch is those rows (``resident_batch``)."""
  images, masks = pipeline.augment_batch(
      key, batch["images"], batch["masks"], data.crop_size,
      data.rotate_degrees, data.flip, rows=batch.get("rows"))
  return pipeline.normalize(images, mean, std), masks


def train_step(state, batch, key, *, model, tx, stage, data, mean, std):
  """One SGD step on a batch, augmented on device.

  ``state`` is ``{"variables": {"params", "batch_stats"}, "opt_state", "step"}``;
  ``batch`` holds uint8 ``images [B, S, S, 3]``, ``masks [B, S, S]``,
  ``labels [B]`` and ``has_mask [B]``. Returns the new state and scalar metrics.
  """
  aug_key, dropout_key = jax.random.split(jax.random.fold_in(key, state["step"]))
  x, batch_masks = augmented_inputs(aug_key, batch, data, mean, std)
  y = batch["labels"]
  y_has_mask = batch["has_mask"]
  params = state["variables"]["params"]
  batch_stats = state["variables"]["batch_stats"]

  def loss_fn(params):
    variables = {"params": params, "batch_stats": batch_stats}
    if stage.train_batch_norm:
      out, updates = model.apply(
          variables, x, train=True, pooling=stage.pooling, mask=batch_masks,
          mutable=["batch_stats"], rngs={"dropout": dropout_key})
      new_stats = updates.get("batch_stats", {})
    else:
      out = model.apply(variables, x, train=True, bn_train=False,
                        pooling=stage.pooling, mask=batch_masks,
                        rngs={"dropout": dropout_key})
      new_stats = batch_stats
    l_class = losses.classification_loss(out["logits"], y)
    l_seg = losses.segmentation_loss(out["seg_logits"], batch_masks, y_has_mask)
    loss = stage.lambda_class * l_class + stage.lambda_seg * l_seg
    return loss, (new_stats, l_class, l_seg, out["logits"])

  (loss, (new_stats, l_class, l_seg, logits)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, state["opt_state"], params)
  params = jax.tree.map(lambda p, u: p + u, params, updates)
  new_state = {"variables": {"params": params, "batch_stats": new_stats},
               "opt_state": opt_state, "step": state["step"] + 1}
  accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
  return new_state, {"loss": loss, "class_loss": l_class, "seg_loss": l_seg,
                     "accuracy": accuracy}


def resident_batch(split: dict, batch_idx) -> dict:
  """Rows ``batch_idx [B]`` of a device-resident split. Images and masks stay
  whole, with ``rows``: the augmentation gathers its pixels from the split
  directly instead of copying the batch first."""
  batch = {k: v[batch_idx] for k, v in split.items()
           if k not in ("images", "masks")}
  return {**batch, "images": split["images"], "masks": split["masks"],
          "rows": batch_idx}


def resident_train_step(state, batch_idx, key, split, **kwargs):
  """``train_step`` on ``split[batch_idx]``, the split already on the devices."""
  return train_step(state, resident_batch(split, batch_idx), key, **kwargs)


# ----------------------------------------------------------------------------
# The job.


class Trainer:
  """What every stage shares: the model, the splits (the training split on
  the devices or streamed from the host), the predictor and the writer."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    checks.check_config(config)
    self.config = config
    self.workdir = workdir
    config.model.num_classes = pipeline.num_classes(config.data.task)
    set_input_normalisation(config)
    self.mean, self.std = tuple(config.data.mean), tuple(config.data.std)
    self.model = rapool_net.build_model(config.model, config.systems)
    self.key = jax.random.key(config.seed, impl=config.systems.prng_impl)
    self.mesh = sharding.make_mesh()
    sharding.check_batch_size(config.train.batch_size, self.mesh)
    sharding.check_batch_size(config.train.eval_batch_size, self.mesh,
                              "train.eval_batch_size")
    self.splits = load_splits(config)
    self.train = self.splits[config.data.train_split]
    self.train_host, self.train_dev = place_training_split(
        self.train, config.data.device_memory_budget_mb, self.mesh)
    self.resident = self.train_dev is not None
    self.predict = evaluate.Predictor(
        self.model, self.mesh, self.mean, self.std,
        config.train.eval_batch_size, config.data.crop_size)
    self.writer = report_lib.MetricWriter(os.path.join(workdir, "tensorboard"))

  def init_variables(self):
    """Step 1: random initialisation, then ``model.pretrained``'s weights."""
    crop = self.config.data.crop_size
    variables = self.model.init(
        {"params": jax.random.fold_in(self.key, 0)},
        jnp.zeros((1, crop, crop, 3), jnp.float32), train=False)
    variables = {"params": variables["params"],
                 "batch_stats": variables.get("batch_stats", {})}
    if self.config.model.pretrained:
      from rapool_jax import pretrained  # pylint: disable=g-import-not-at-top
      variables = pretrained.load_pretrained(variables, self.config.model)
    return variables

  def run_stage(self, index: int, name: str, variables, finished: dict):
    """Trains stage ``name`` from ``variables`` (or its checkpoint), drawing
    batch order ``index``; returns its final variables and meta."""
    stage = self.config.stages[name]
    tx = optim.make_optimizer(self.config.optimizer, stage, variables["params"])
    with ckpt_lib.manager(self.workdir, name,
                          self.config.train.keep_checkpoints) as mngr:
      state, meta = self._start_or_resume(mngr, name, tx, variables, finished)
      if not meta["done"]:
        state = self._train(mngr, index, name, tx, state, meta)
        meta["done"] = True
        ckpt_lib.save(mngr, int(meta["step"]) + 1, state, meta)
    return state["variables"], meta

  def _start_or_resume(self, mngr, name, tx, variables, finished):
    """The stage's state and meta: fresh from ``variables``, or restored."""
    # The step donates its state; the caller keeps ``variables`` (CAMs, RankOpt).
    variables = jax.tree.map(jnp.copy, variables)
    state = {"variables": variables, "opt_state": tx.init(variables["params"]),
             "step": jnp.zeros((), jnp.int32)}
    state = sharding.put_replicated(state, self.mesh)
    meta = {"stage": name, "step": 0, "done": False,
            "plateau": {"best": None, "bad": 0, "history": []},
            "finished": finished}
    step, saved_meta = ckpt_lib.latest_meta(mngr)
    if step is None:
      return state, meta
    print(f"[{name}] resumed from checkpoint at step {step}", flush=True)
    return ckpt_lib.restore_state(mngr, step, state), saved_meta

  def _train(self, mngr, index, name, tx, state, meta):
    """Steps ``meta["step"]``..``max_steps - 1`` (or to a plateau); logs and
    checkpoints on the way. Returns the state (``meta`` is updated)."""
    config, stage = self.config, self.config.stages[name]
    train_fn = functools.partial(
        resident_train_step if self.resident else train_step,
        model=self.model, tx=tx, stage=stage, data=config.data,
        mean=self.mean, std=self.std)
    progress = report_lib.Progress(name, stage.max_steps, config.train.batch_size)
    start = int(meta["step"])
    progress.start(start)  # the first step's time includes compilation
    data = (self.train_dev,) if self.resident else ()
    step_fn = None
    for t, batch in enumerate(self._batches(index, start, stage.max_steps),
                              start):
      args = (batch, self.key) + data
      if step_fn is None:
        step_fn, state = sharding.compile_train_step(
            train_fn, state, args, sharding.replicated(self.mesh),
            layout=config.systems.state_layout,
            donate=config.systems.donate_state)
      state, scalars = step_fn(state, *args)
      if t == start:  # img/s and ETA count from the end of the first step
        jax.block_until_ready(scalars)
        progress.compiled(t + 1)
      meta["step"] = t + 1
      if (t + 1) % config.train.log_every == 0 or t + 1 == stage.max_steps:
        self._log(name, t + 1, scalars, progress)
      if self._plateau_reached(name, state["variables"], meta, t + 1):
        break
      if (t + 1) % config.train.checkpoint_every == 0:
        ckpt_lib.save(mngr, t + 1, state, meta)
    return state

  def _log(self, name: str, step: int, scalars: dict, progress) -> None:
    scalars = jax.tree.map(sharding.to_host, scalars)
    if not np.isfinite(scalars["loss"]):
      raise FloatingPointError(
          f"[{name}] loss is {scalars['loss']} at step {step}: lower "
          f"config.stages.{name}.lr (now {self.config.stages[name].lr})")
    progress.log(step, scalars)
    self.writer.scalars(f"{name}/train", step, scalars)

  def _plateau_reached(self, name: str, variables, meta, step: int) -> bool:
    """At the stage's plateau rule's evaluations: True when it says stop."""
    stage = self.config.stages[name]
    rule = stage.plateau
    if not rule.metric or step % rule.eval_every:
      return False
    val = self.splits[self.config.data.val_split]
    value = evaluate.validation_metric(
        self.predict(variables, val, stage.pooling), val, rule.metric,
        self.config.data.crop_size)
    self.writer.scalars(f"{name}/val", step, {rule.metric: abs(value)})
    if plateau_update(meta["plateau"], step, value,
                      rule.min_delta) < rule.patience:
      return False
    print(f"[{name}] {rule.metric} has not improved for {rule.patience} "
          f"evaluations: stopping at step {step}", flush=True)
    return True

  def _batches(self, stage_index: int, start: int, stop: int):
    """Yields step ``start``..``stop - 1``'s batch, sharded over the devices.

    On-device data: the sharded index vector. Streamed data: the examples
    themselves, each process gathering only its own rows, prefetched by grain.
    """
    config = self.config
    indices = lambda t: pipeline.batch_indices(  # noqa: E731
        config.seed, stage_index, t, config.train.batch_size, len(self.train))
    if self.resident:
      for t in range(start, stop):
        yield sharding.put_global_batch(indices(t), self.mesh)
      return
    yield from sharding.stream_host_batches(
        self.train_host, indices, start, stop, config.train.batch_size,
        self.mesh)


def plateau_update(tracker: dict, step: int, value: float,
                   min_delta: float) -> int:
  """Records ``value`` (higher is better) at ``step`` in ``tracker``
  (``{"best", "bad", "history"}``, kept in the checkpoint's meta); returns
  how many evaluations in a row have not beaten the best by ``min_delta``."""
  tracker["history"].append([step, value])
  if tracker["best"] is None or value > tracker["best"] + min_delta:
    tracker["best"], tracker["bad"] = value, 0
  else:
    tracker["bad"] += 1
  return tracker["bad"]


def set_input_normalisation(config: ml_collections.ConfigDict) -> None:
  """ImageNet weights define the input normalisation: ``config.data.mean``
  and ``std`` are set from them (in place; ``config.json`` records it)."""
  if (config.model.pretrained
      and config.model.get("backbone", "resnet") == "resnet"):
    from rapool_jax import pretrained  # pylint: disable=g-import-not-at-top
    prep = pretrained.preprocessing_for(config.model.pretrained)
    config.data.mean, config.data.std = tuple(prep.mean), tuple(prep.std)
    print(f"inputs normalised as the weights expect: {prep.as_dict()}",
          flush=True)


def place_training_split(train: pipeline.Split, budget_mb: float, mesh):
  """``(host, device)``: the training split's arrays (uint8 ``images
  [N, S, S, 3]``, ``masks [N, S, S]``, ``labels [N]``, ``has_mask [N]``) on
  the host, and replicated on the devices if within ``budget_mb`` (else
  None)."""
  host = {"images": train.images, "masks": train.masks,
          "labels": train.labels, "has_mask": train.has_mask}
  # On the devices as uint8, batches are gathered and augmented inside jit;
  # a larger split streams from the host through grain, prefetched in
  # background threads.
  nbytes = sum(a.nbytes for a in host.values())
  resident = nbytes <= budget_mb * 2**20
  print(f"training split: {len(train)} examples, {nbytes / 2**20:.0f} MiB, "
        f"{'on device' if resident else 'streamed from host'}", flush=True)
  return host, (sharding.put_replicated(host, mesh) if resident else None)


def load_splits(config: ml_collections.ConfigDict) -> dict:
  """Every split the run names (``pipeline.Split``s by name); a stage that
  trains segmentation needs lesion masks in the training split."""
  needs_masks = any(config.stages[s].lambda_seg > 0 for s in config.stage_order)
  builder = pipeline.make_builder(config.data, require_train_masks=needs_masks)
  splits = folds.load_splits(builder, config.data)
  if needs_masks and not splits[config.data.train_split].has_mask.any():
    raise ValueError(f"split {config.data.train_split!r} has no lesion masks "
                     "but a stage has lambda_seg > 0")
  return splits


def batch_stream(config, index: int) -> int:
  """Which batch order stage ``index`` draws (``pipeline.batch_indices``).

  Its own, except for arms (stages with ``init_from``): they all draw the
  first arm's, so arms differ only in what they ablate, not in their data."""
  order = config.stage_order
  if not config.stages[order[index]].get("init_from"):
    return index
  return next(i for i, n in enumerate(order) if config.stages[n].get("init_from"))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every stage, RankOpt and the evaluation; writes the report. Returns results."""
  with ckpt_lib.hold_workdir(workdir):
    os.makedirs(workdir, exist_ok=True)
    checks.check_resumed_config(config, workdir)
    if config.systems.compilation_cache_dir:
      jax.config.update("jax_compilation_cache_dir",
                        config.systems.compilation_cache_dir)
    t0 = time.time()
    trainer = Trainer(config, workdir)
    checks.check_before_training(config, workdir, trainer)
    if jax.process_index() == 0:
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))

    variables = trainer.init_variables()
    finished: dict[str, Any] = {}
    stage_variables = {}
    rows = []
    for index, name in enumerate(config.stage_order):
      stage = config.stages[name]
      if stage.get("init_from"):  # an arm branching from an earlier stage
        variables = stage_variables[stage.init_from]
      variables, meta = trainer.run_stage(batch_stream(config, index), name,
                                          variables, finished)
      stage_variables[name] = variables
      if stage.report_as:
        row = evaluate.evaluate_model(trainer, stage.report_as, variables,
                                      stage.pooling)
        rows.append({**row, "stage": name})
        print(report_lib.format_row(row), flush=True)
      finished[name] = {"steps": meta["step"]}
    if config.rankopt.enabled:
      for row in evaluate.fit_linear_heads(trainer, stage_variables):
        rows.append(row)
        print(report_lib.format_row(row), flush=True)

    eval_split = trainer.splits[config.data.eval_split]
    results = {"data": config.data.name, "eval_split": config.data.eval_split,
               "num_eval_examples": len(eval_split), "rows": rows,
               "stages": finished}
    report_lib.write_report(workdir, config, results, trainer, stage_variables,
                            eval_split)
    if jax.process_index() == 0:
      provenance.append_run_info(workdir, time.time() - t0, jax.devices())
      print(f"wrote {os.path.join(workdir, 'results.md')} "
            f"({time.time() - t0:.0f} s)", flush=True)
    return results
