"""Training and evaluation: the paper's steps run in order from ``config.stage_order``.

``train_and_evaluate(config, workdir)`` is the whole job: Step 1 initialisation,
each configured stage (with its own pooling, loss weights, frozen parameters and
schedule), RankOpt on the pooled training features, evaluation of every
reported model on the evaluation split, and the report (table, ROC, CAMs).
Every stage checkpoints periodically and at its end; a restarted run picks up
where the last checkpoint left off and ends with the same results.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from rapool_jax import checkpoint as ckpt_lib
from rapool_jax import checks
from rapool_jax import config_lib
from rapool_jax import errors
from rapool_jax import evaluate
from rapool_jax import losses
from rapool_jax import metrics as metrics_lib
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


def lower_train_step(step, state, args: tuple, state_sharding, *,
                     layout: str, donate: bool):
  """``step(state, *args) -> (state, scalars)`` jitted and lowered.

  The state is placed by ``sharding.state_formats(state, state_sharding,
  layout)`` (in and out, so a donated state is updated where it lies); the
  other arguments keep their own shardings. ``state`` and ``args`` may be
  arrays or ``jax.ShapeDtypeStruct``s.
  """
  formats = sharding.state_formats(state, state_sharding, layout)
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


def eval_step(variables, images, masks, *, model, pooling, mean, std):
  """Inference on a centre-cropped batch: probabilities, features, masks."""
  out = model.apply(variables, pipeline.normalize(images, mean, std),
                    train=False, pooling=pooling, mask=masks)
  return {"probs": jax.nn.softmax(out["logits"], -1),
          "pooled": out["pooled"],
          "seg_pred": jnp.argmax(out["seg_logits"], -1).astype(jnp.uint8),
          "score_map": out["score_map"]}


def stream_host_batches(host: dict, indices, start: int, stop: int,
                        batch_size: int, mesh):
  """Yields steps ``start``..``stop - 1``'s batches of ``host`` arrays (uint8
  ``images [N, S, S, 3]``, ...), rows ``indices(t)`` ``[batch_size]``, as
  global arrays sharded over ``mesh``'s data axis.

  Each process gathers only its own rows; grain runs the gathers in
  background threads, a few steps ahead of training.
  """
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
        sharding.batch_sharding(mesh), v, (batch_size,) + v.shape[1:])
           for k, v in local.items()}


PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def make_key(seed: int, impl: str):
  """The run's root key; ``impl`` is ``systems.prng_impl``."""
  if impl not in PRNG_IMPLS:
    raise errors.UserError(
        f"config key systems.prng_impl: {impl!r} is not one of {PRNG_IMPLS}")
  return jax.random.key(seed, impl=impl)


# ----------------------------------------------------------------------------
# The job.


class Trainer:
  """Holds what every stage shares: model, data on device, jitted steps."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    check_config(config)
    self.config = config
    self.workdir = workdir
    config.model.num_classes = pipeline.num_classes(config.data.task)
    if (config.model.pretrained
        and config.model.get("backbone", "resnet") == "resnet"):
      # The weights define the input normalisation; config.json records it.
      from rapool_jax import pretrained
      prep = pretrained.preprocessing_for(config.model.pretrained)
      config.data.mean, config.data.std = tuple(prep.mean), tuple(prep.std)
      print(f"inputs normalised as the weights expect: {prep.as_dict()}",
            flush=True)
    self.mean = tuple(config.data.mean)
    self.std = tuple(config.data.std)
    self.model = rapool_net.build_model(config.model, config.systems)
    # Before the data loads: a bad systems.prng_impl fails at once.
    self.key = make_key(config.seed, config.systems.prng_impl)

    needs_masks = any(config.stages[s].lambda_seg > 0 for s in config.stage_order)
    builder = pipeline.make_builder(config.data, require_train_masks=needs_masks)
    self.splits = folds.load_splits(builder, config.data)
    train = self.splits[config.data.train_split]
    if needs_masks and not train.has_mask.any():
      raise ValueError(f"split {config.data.train_split!r} has no lesion masks "
                       "but a stage has lambda_seg > 0")
    self.train = train
    self.mesh = sharding.make_mesh()
    sharding.check_batch_size(config.train.batch_size, self.mesh)
    sharding.check_batch_size(config.train.eval_batch_size, self.mesh,
                              "train.eval_batch_size")
    self.train_host = {"images": train.images, "masks": train.masks,
                       "labels": train.labels, "has_mask": train.has_mask}
    # A split within the budget lives on the devices as uint8 and its batches
    # are gathered and augmented inside jit; a larger one streams from the
    # host through grain, prefetched in background threads.
    nbytes = sum(a.nbytes for a in self.train_host.values())
    self.resident = nbytes <= config.data.device_memory_budget_mb * 2**20
    self.train_dev = (sharding.put_replicated(self.train_host, self.mesh)
                      if self.resident else None)
    print(f"training split: {len(train)} examples, {nbytes / 2**20:.0f} MiB, "
          f"{'on device' if self.resident else 'streamed from host'}",
          flush=True)
    self.writer = report_lib.MetricWriter(os.path.join(workdir, "tensorboard"))
    self._eval_fns = {}

  # -- initialisation (Step 1) -----------------------------------------------

  def init_variables(self):
    crop = self.config.data.crop_size
    variables = self.model.init(
        {"params": jax.random.fold_in(self.key, 0)},
        jnp.zeros((1, crop, crop, 3), jnp.float32), train=False)
    variables = {"params": variables["params"],
                 "batch_stats": variables.get("batch_stats", {})}
    if self.config.model.pretrained:
      from rapool_jax import pretrained
      variables = pretrained.load_pretrained(variables, self.config.model)
    return variables

  # -- one stage ---------------------------------------------------------------

  def run_stage(self, index: int, name: str, variables, finished: dict):
    """Trains stage ``name`` from ``variables`` (or its checkpoint); returns meta."""
    with ckpt_lib.manager(self.workdir, name,
                          self.config.train.keep_checkpoints) as mngr:
      return self._run_stage(mngr, index, name, variables, finished)

  def _run_stage(self, mngr, index, name, variables, finished):
    config, stage = self.config, self.config.stages[name]
    tx = optim.make_optimizer(config.optimizer, stage, variables["params"])
    # The step donates its state; the caller keeps ``variables`` (CAMs, RankOpt).
    variables = jax.tree.map(jnp.copy, variables)
    state = {"variables": variables, "opt_state": tx.init(variables["params"]),
             "step": jnp.zeros((), jnp.int32)}
    meta = {"stage": name, "step": 0, "done": False,
            "plateau": {"best": None, "bad": 0, "history": []},
            "finished": finished}
    state = sharding.put_replicated(state, self.mesh)
    step, saved_meta = ckpt_lib.latest_meta(mngr)
    if step is not None:
      state = ckpt_lib.restore_state(mngr, step, state)
      meta = saved_meta
      print(f"[{name}] resumed from checkpoint at step {step}", flush=True)
      if meta["done"]:
        return state["variables"], meta

    train_fn = functools.partial(
        resident_train_step if self.resident else train_step,
        model=self.model, tx=tx, stage=stage, data=config.data,
        mean=self.mean, std=self.std)
    progress = report_lib.Progress(name, stage.max_steps, config.train.batch_size)
    start = int(meta["step"])
    progress.start(start)  # the first step's time includes compilation
    batches = self._batches(index, start, stage.max_steps)
    data = (self.train_dev,) if self.resident else ()
    step_fn = None
    for t in range(start, stage.max_steps):
      args = (next(batches), self.key) + data
      if step_fn is None:
        step_fn, state = compile_train_step(
            train_fn, state, args, sharding.replicated(self.mesh),
            layout=config.systems.state_layout,
            donate=config.systems.donate_state)
      state, scalars = step_fn(state, *args)
      if t == start:  # img/s and ETA count from the end of the first step
        jax.block_until_ready(scalars)
        progress.compiled(t + 1)
      meta["step"] = t + 1
      if (t + 1) % config.train.log_every == 0 or t + 1 == stage.max_steps:
        scalars = jax.tree.map(sharding.to_host, scalars)
        if not np.isfinite(scalars["loss"]):
          raise FloatingPointError(
              f"[{name}] loss is {scalars['loss']} at step {t + 1}: lower "
              f"config.stages.{name}.lr (now {stage.lr})")
        progress.log(t + 1, scalars)
        self.writer.scalars(f"{name}/train", t + 1, scalars)
      if stage.plateau_metric and (t + 1) % stage.plateau_eval_every == 0:
        if self._plateau_update(name, stage, state["variables"], meta, t + 1):
          print(f"[{name}] {stage.plateau_metric} has not improved for "
                f"{stage.plateau_patience} evaluations: stopping at step "
                f"{t + 1}", flush=True)
          break
      if (t + 1) % config.train.checkpoint_every == 0:
        ckpt_lib.save(mngr, t + 1, state, meta)
    meta["done"] = True
    ckpt_lib.save(mngr, int(meta["step"]) + 1, state, meta)
    return state["variables"], meta

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
    yield from stream_host_batches(self.train_host, indices, start, stop,
                                   config.train.batch_size, self.mesh)

  def _plateau_update(self, name, stage, variables, meta, step) -> bool:
    """Evaluates the plateau metric; returns True when the stage should stop."""
    val = self.splits[self.config.data.val_split]
    out = self.predict(variables, val, stage.pooling)
    metric = stage.plateau_metric
    if metric == "val_loss":
      value = -float(np.mean(-np.log(np.maximum(
          out["probs"][np.arange(len(val)), val.labels], 1e-12))))
    elif metric == "val_auc":
      value = metrics_lib.classification_metrics(
          val.labels, out["probs"][:, 1], 0.5)["auc"]
    else:  # "val_jaccard": check_config admits no other name
      value = float(np.nanmean(evaluate.per_image_jaccard(
          out, val, self.config.data.crop_size)))
    p = meta["plateau"]
    p["history"].append([step, value])
    self.writer.scalars(f"{name}/val", step, {metric: abs(value)})
    if p["best"] is None or value > p["best"] + stage.plateau_min_delta:
      p["best"], p["bad"] = value, 0
    else:
      p["bad"] += 1
    return p["bad"] >= stage.plateau_patience

  # -- evaluation ----------------------------------------------------------------

  def predict(self, variables, split: pipeline.Split, pooling: str):
    """Runs the model over a split (centre crop). Returns host arrays."""
    key = pooling
    if key not in self._eval_fns:
      replicated = sharding.replicated(self.mesh)
      self._eval_fns[key] = jax.jit(functools.partial(
          eval_step, model=self.model, pooling=pooling, mean=self.mean,
          std=self.std), out_shardings=replicated)
    fn = self._eval_fns[key]
    bs = self.config.train.eval_batch_size
    crop = self.config.data.crop_size
    outs = []
    for lo in range(0, len(split), bs):
      images = split.images[lo:lo + bs]
      masks = split.masks[lo:lo + bs]
      n = len(images)
      if n < bs:  # pad to a fixed shape: one compilation per split size
        images = np.concatenate([images, np.zeros((bs - n,) + images.shape[1:],
                                                  images.dtype)])
        masks = np.concatenate([masks, np.zeros((bs - n,) + masks.shape[1:],
                                                masks.dtype)])
      images, masks = pipeline.center_crop(images, masks, crop)
      out = fn(variables, sharding.put_global_batch(images, self.mesh),
               sharding.put_global_batch(masks, self.mesh))
      outs.append({k: sharding.to_host(v)[:n] for k, v in out.items()})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


# Checked before any training step (moved to checks.py; names kept here).
PLATEAU_METRICS = checks.PLATEAU_METRICS
check_config = checks.check_config


# Where a run reads and writes, how it logs, checkpoints, lays out and
# compiles its state: a resumed run may change these and keep its results
# (streamed and device-resident data train identically).
RESUME_MAY_CHANGE = frozenset({
    "systems.compilation_cache_dir", "data.data_dir", "data.manual_dir",
    "data.device_memory_budget_mb", "report.num_cam_images",
    "train.checkpoint_every", "systems.donate_state", "train.eval_batch_size",
    "train.keep_checkpoints", "train.log_every", "systems.state_layout"})


def check_resumed_config(config: ml_collections.ConfigDict,
                         workdir: str) -> None:
  """Raises ValueError naming every setting that differs from the run whose
  checkpoints ``workdir`` holds (its ``config.json``): resuming would
  otherwise mix two configurations in one result. Keys in only one of the
  two (added by a newer version) and ``RESUME_MAY_CHANGE`` are not compared."""
  checks.check_workdir_labels(workdir)
  saved_path = os.path.join(workdir, "config.json")
  # No config.json beside checkpoints: stages linked by launch/fanout.py
  # (check_workdir_labels refuses any other case).
  if not (checks.has_checkpoints(workdir) and os.path.isfile(saved_path)):
    return
  try:
    with open(saved_path) as f:
      saved = json.load(f)
    if not isinstance(saved, dict):
      raise TypeError(f"a JSON {type(saved).__name__}, not an object")
  except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
    raise ValueError(f"{saved_path}: not the JSON of a config "
                     f"({errors.one_line(e)}); restore it, or use a new "
                     "--workdir") from None
  saved = config_lib.upgrade_flat(traverse_util.flatten_dict(saved, sep="."))
  # Resolved as the trainer resolves it before writing config.json.
  now = traverse_util.flatten_dict(
      json.loads(checks.resolved_copy(config).to_json_best_effort()), sep=".")
  changed = [f"{key}={saved[key]!r} (now {now[key]!r})"
             for key in sorted(saved.keys() & now.keys())
             if key not in RESUME_MAY_CHANGE and saved[key] != now[key]]
  if changed:
    raise ValueError(
        f"{workdir} holds checkpoints of a run with {', '.join(changed)}: "
        "pass the saved values (--config.KEY=VALUE) to resume or re-run it, "
        "or use a new --workdir for the new ones (its results would "
        f"otherwise sit beside a {saved_path} that does not describe them)")


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
  os.makedirs(workdir, exist_ok=True)
  check_resumed_config(config, workdir)
  if config.systems.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      config.systems.compilation_cache_dir)
  t0 = time.time()
  trainer = Trainer(config, workdir)
  checks.check_before_training(config, workdir, trainer)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  eval_split = trainer.splits[config.data.eval_split]

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
      row["stage"] = name
      rows.append(row)
      print(report_lib.format_row(row), flush=True)
    finished[name] = {"steps": meta["step"]}

  if config.rankopt.enabled:
    for row in evaluate.fit_linear_heads(trainer, stage_variables):
      rows.append(row)
      print(report_lib.format_row(row), flush=True)

  results = {"data": config.data.name, "eval_split": config.data.eval_split,
             "num_eval_examples": len(eval_split), "rows": rows,
             "stages": finished}
  report_lib.write_report(workdir, config, results, trainer, stage_variables,
                          eval_split)
  if jax.process_index() != 0:
    return results
  info_path = os.path.join(workdir, "run_info.json")
  invocations, runs = [], []
  if os.path.exists(info_path):
    with open(info_path) as f:
      saved = json.load(f)
    invocations, runs = saved.get("invocations", []), saved.get("runs", [])
  invocations.append(time.time() - t0)
  # Provenance of each invocation (a resumed run has several): commit,
  # package versions, command line.
  runs.append({**provenance.run_record(), "wall_time_s": invocations[-1]})
  with open(info_path, "w") as f:
    json.dump({"wall_time_s": sum(invocations), "invocations": invocations,
               "devices": [str(d) for d in jax.devices()],
               **{k: runs[-1][k] for k in ("command", "commit", "packages")},
               "runs": runs}, f, indent=2)
  print(f"wrote {os.path.join(workdir, 'results.md')} "
        f"({time.time() - t0:.0f} s)", flush=True)
  return results
