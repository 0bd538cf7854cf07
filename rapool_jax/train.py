"""Training as flax writes it: a ``TrainState`` per stage, a pure
``train_step``, and ``train_stage``, which runs one of the paper's steps to its
end (or to a plateau of a validation metric), checkpointing on the way.
"""

from __future__ import annotations

from typing import Any, Callable

from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np

from rapool_jax import checkpoint as ckpt_lib
from rapool_jax import config_lib
from rapool_jax import errors
from rapool_jax import losses
from rapool_jax import optim
from rapool_jax import pooling as pooling_lib
from rapool_jax import pretrained
from rapool_jax import progress as progress_lib
from rapool_jax import sharding
from rapool_jax.data import pipeline

PLATEAU_METRICS = ("val_loss", "val_auc", "val_jaccard")
PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


class TrainState(train_state.TrainState):
  """flax's ``TrainState`` with the BatchNorm statistics beside the params."""
  batch_stats: Any = None

  @property
  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}


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


def train_step(state: TrainState, batch, key, *, stage, data, mean, std,
               segmentation_loss=losses.segmentation_loss):
  """One SGD step on a batch, augmented on device (Eq. 3's loss).

  ``batch`` holds uint8 ``images [B, S, S, 3]``, ``masks [B, S, S]``,
  ``labels [B]`` and ``has_mask [B]``. Returns the new state and scalar
  metrics. ``segmentation_loss`` is there for the benchmarks' variants of
  the step (``benchmarks/analyses.py``)."""
  aug_key, dropout_key = jax.random.split(jax.random.fold_in(key, state.step))
  x, masks = augmented_inputs(aug_key, batch, data, mean, std)
  labels = batch["labels"]

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    kwargs = dict(train=True, pooling=stage.pooling, mask=masks,
                  rngs={"dropout": dropout_key})
    if stage.train_batch_norm:
      out, updates = state.apply_fn(variables, x, mutable=["batch_stats"],
                                    **kwargs)
      new_stats = updates.get("batch_stats", {})
    else:  # the paper's Step 3: statistics frozen with the backbone
      out = state.apply_fn(variables, x, bn_train=False, **kwargs)
      new_stats = state.batch_stats
    l_class = losses.classification_loss(out["logits"], labels)
    l_seg = segmentation_loss(out["seg_logits"], masks, batch["has_mask"])
    loss = stage.lambda_class * l_class + stage.lambda_seg * l_seg
    return loss, (new_stats, l_class, l_seg, out["logits"])

  (loss, (new_stats, l_class, l_seg, logits)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=new_stats)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return state, {"loss": loss, "class_loss": l_class, "seg_loss": l_seg,
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
# Settings this module owns, checked before any stage trains.


def make_key(seed: int, prng_impl: str) -> jax.Array:
  """The run's root key (``config.seed``, ``config.systems.prng_impl``)."""
  return jax.random.key(seed, impl=prng_impl)


def check_stage(config, name: str) -> None:
  """One stage's keys, pooling, loss weights, length and plateau rule (its
  schedule and trainable rules: ``optim.make_optimizer``)."""
  stage, where = config.stages[name], f"config.stages.{name}"
  for key in sorted(set(stage.keys()) - config_lib.STAGE_KEYS):
    # A config file that sets an unknown key on a stage would otherwise
    # train without the setting it meant.
    hint = config_lib.legacy_key_hint(f"stages.{name}.{key}")
    raise errors.UserError(
        f"{where}.{key} is not a stage setting; "
        + (hint or f"choose from {sorted(config_lib.STAGE_KEYS)}"))
  pooling_lib.get_pooling(stage.pooling, where=f"{where}.pooling")
  losses.check_loss_weights(stage, where)
  errors.check_range(f"{where}.max_steps", stage.max_steps, low=0)
  plateau = stage.plateau
  for key in ("eval_every", "patience"):
    errors.check_range(f"{where}.plateau.{key}", plateau[key], low=1)
  errors.check_range(f"{where}.plateau.min_delta", plateau.min_delta, low=0)
  if plateau.metric:
    errors.check_choice(f"{where}.plateau.metric", plateau.metric,
                        PLATEAU_METRICS, "choose '' or one of")
    if not config.data.val_split:
      raise errors.UserError(f"{where}.plateau.metric={plateau.metric!r} "
                             "needs config.data.val_split, which is empty")


def check_train_settings(config) -> None:
  """``config.train`` and the PRNG ``make_key`` draws from."""
  for key in ("batch_size", "eval_batch_size", "log_every", "checkpoint_every",
              "keep_checkpoints"):
    errors.check_range(f"config.train.{key}", config.train[key], low=1)
  errors.check_range("config.train.eval_every", config.train.eval_every, low=0)
  errors.check_choice("config.systems.prng_impl", config.systems.prng_impl,
                      PRNG_IMPLS)


def init_variables(model, key, crop_size: int, model_config) -> dict:
  """Step 1: random initialisation, then ``model_config.pretrained``'s
  weights (``{"params", "batch_stats"}``)."""
  variables = model.init({"params": jax.random.fold_in(key, 0)},
                         jnp.zeros((1, crop_size, crop_size, 3), jnp.float32),
                         train=False)
  variables = {"params": variables["params"],
               "batch_stats": variables.get("batch_stats", {})}
  if model_config.pretrained:
    variables = pretrained.load_pretrained(variables, model_config)
  return variables


def create_train_state(model, variables, tx, mesh,
                       members: int = 0) -> TrainState:
  """A fresh stage state from ``variables``, replicated over ``mesh``; with
  ``members``, a population's: every leaf and the step stacked ``[P, ...]``.

  Copies: the step donates its state, and the caller keeps ``variables``."""
  variables = jax.tree.map(jnp.copy, variables)
  init = jax.vmap(tx.init) if members else tx.init
  # An int32 array, not flax's Python 0: the step is traced and checkpointed.
  return sharding.put_replicated(TrainState(
      step=jnp.zeros((members,) if members else (), jnp.int32),
      apply_fn=model.apply, params=variables["params"],
      batch_stats=variables["batch_stats"], tx=tx,
      opt_state=init(variables["params"])), mesh)


# ----------------------------------------------------------------------------
# One stage.


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


def train_stage(state: TrainState, step_fn: Callable, batches: Callable, *,
                name: str, config, workdir: str, mesh, finished: dict,
                validate: Callable | None = None, writer=None):
  """Trains stage ``name`` from ``state`` (or from its last checkpoint).

  ``step_fn(state, *args) -> (state, scalars)`` is pure; ``batches(start,
  stop)`` yields each step's ``args``; ``validate(variables) -> {metric:
  value}`` (``evaluate.validation_metrics``) serves the TensorBoard curves
  and the stage's plateau rule. Returns the final variables and the stage's
  meta (``step``, ``done``, plateau history)."""
  with ckpt_lib.manager(workdir, name, config.train.keep_checkpoints) as mngr:
    meta = {"stage": name, "step": 0, "done": False,
            "plateau": {"best": None, "bad": 0, "history": []},
            "finished": finished}
    step, saved_meta = ckpt_lib.latest_meta(mngr)
    if step is not None:
      print(f"[{name}] resumed from checkpoint at step {step}", flush=True)
      state = restore_train_state(mngr, step, state)
      meta = saved_meta
    if not meta["done"]:
      try:
        state = _run_steps(state, step_fn, batches, mngr, meta, name=name,
                           config=config, mesh=mesh, validate=validate,
                           writer=writer)
      finally:  # the stage's curves on disk, a diverged one's too
        if writer is not None:
          writer.close()
      meta["done"] = True
      save_train_state(mngr, int(meta["step"]) + 1, state, meta)
  return state.variables, meta


def _run_steps(state, step_fn, batches, mngr, meta, *, name, config, mesh,
               validate, writer):
  """Steps ``meta["step"]``..``max_steps - 1`` (or to a plateau); logs and
  checkpoints on the way. Returns the state (``meta`` is updated)."""
  stage = config.stages[name]
  lr_at = optim.learning_rate_schedule(stage)
  progress = progress_lib.Progress(name, stage.max_steps,
                                   config.train.batch_size)
  start = int(meta["step"])
  progress.start(start)  # the first step's time includes compilation
  compiled = None
  for t, args in enumerate(batches(start, stage.max_steps), start):
    if compiled is None:
      compiled, state = sharding.compile_train_step(
          step_fn, state, args, sharding.replicated(mesh),
          layout=config.systems.state_layout,
          donate=config.systems.donate_state)
    state, scalars = compiled(state, *args)
    if t == start:  # img/s and ETA count from the end of the first step
      jax.block_until_ready(scalars)
      progress.compiled(t + 1)
    meta["step"] = t + 1
    if (t + 1) % config.train.log_every == 0 or t + 1 == stage.max_steps:
      # Step t updated with the rate at optax's count t.
      _log(name, t + 1, scalars, progress, writer, stage.lr, float(lr_at(t)))
    if validate and _validated(name, stage, config.train.eval_every, state,
                               meta, t + 1, validate, writer):
      break
    if (t + 1) % config.train.checkpoint_every == 0:
      save_train_state(mngr, t + 1, state, meta)
  return state


def _log(name: str, step: int, scalars: dict, progress, writer, lr,
         lr_now: float) -> None:
  scalars = jax.tree.map(sharding.to_host, scalars)
  if not np.isfinite(scalars["loss"]):
    raise errors.DivergedError(
        f"[{name}] loss is {scalars['loss']} at step {step}: lower "
        f"config.stages.{name}.lr (now {lr})")
  progress.log(step, scalars)
  if writer is not None:
    writer.scalars(f"{name}/train", step, {**scalars, "lr": lr_now})


def _validated(name, stage, eval_every: int, state, meta, step, validate,
               writer) -> bool:
  """Every ``eval_every`` steps, at the stage's last step and at its plateau
  rule's evaluations: the validation metrics to TensorBoard. True when the
  plateau rule says stop."""
  rule = stage.plateau
  at_rule = bool(rule.metric) and step % rule.eval_every == 0
  if not (at_rule or (eval_every and (step % eval_every == 0
                                      or step == stage.max_steps))):
    return False
  values = validate(state.variables)
  if writer is not None:
    writer.scalars(f"{name}/val", step,
                   {k: v for k, v in values.items() if np.isfinite(v)})
  if not at_rule:
    return False
  value = values[rule.metric] * (-1 if rule.metric == "val_loss" else 1)
  if plateau_update(meta["plateau"], step, value, rule.min_delta) < rule.patience:
    return False
  print(f"[{name}] {rule.metric} has not improved for {rule.patience} "
        f"evaluations: stopping at step {step}", flush=True)
  return True


# ----------------------------------------------------------------------------
# Checkpoints keep today's layout ({"variables", "opt_state", "step"}), so
# workdirs written before the TrainState resume, and launch/ tools read them.


def _as_saved(state: TrainState) -> dict:
  return {"variables": state.variables, "opt_state": state.opt_state,
          "step": state.step}


def save_train_state(mngr, step: int, state: TrainState, meta: dict) -> None:
  ckpt_lib.save(mngr, step, _as_saved(state), meta)


def restore_train_state(mngr, step: int, target: TrainState) -> TrainState:
  saved = ckpt_lib.restore_state(mngr, step, _as_saved(target))
  return target.replace(params=saved["variables"]["params"],
                        batch_stats=saved["variables"]["batch_stats"],
                        opt_state=saved["opt_state"], step=saved["step"])
