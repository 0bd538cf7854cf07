"""The whole job: ``train_and_evaluate(config, workdir)``: every setting
checked, Step 1, each stage (``train.train_stage``), the linear heads, the
evaluation and the report. A restarted run resumes from its checkpoints and
ends with the same results.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import ml_collections

from rapool_jax import checkpoint
from rapool_jax import checks
from rapool_jax import config_lib
from rapool_jax import errors
from rapool_jax import evaluate
from rapool_jax import optim
from rapool_jax import pretrained
from rapool_jax import progress
from rapool_jax import provenance
from rapool_jax import report as report_lib
from rapool_jax import sharding
from rapool_jax import train
from rapool_jax import weight_files
from rapool_jax.data import folds
from rapool_jax.data import pipeline
from rapool_jax.models import rapool_net


class Job(NamedTuple):
  """What every stage of one run shares (built once by ``setup``)."""
  model: Any
  mesh: Any
  key: Any
  splits: dict
  train_host: dict   # the training split's arrays on the host
  train_dev: Any     # ... replicated on the devices, or None (streamed)
  predict: Callable  # evaluate.make_predict_fn's
  writer: Any


# ----------------------------------------------------------------------------
# Before the first step.


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Every setting that needs no model and no data, each by its owner; one
  line naming the key and value at fault."""
  config_lib.check_stage_order(config)
  pipeline.check_data_settings(config.data)
  folds.check_crossval(config.data)
  if config.model.pretrained:
    weight_files.check_readable(config.model.pretrained)
  train.check_train_settings(config)
  sharding.check_state_layout(config.systems.state_layout)
  optim.check_optimizer(config.optimizer)
  for name in config.stage_order:
    train.check_stage(config, name)
    where = f"config.stages.{name}"
    optim.check_schedule(config.stages[name], where)
    optim.check_trainable_rules(where, config.stages[name].trainable)
    optim.warn_if_never_annealed(config.stages[name], where)
  evaluate.check_heads(config)
  checks.check_split_roles(config)


def check_stage_optimizers(config, model) -> None:
  """Each stage's optimizer is built on the parameters' shapes (nothing is
  computed): its trainable rules must cover every parameter."""
  crop = config.data.crop_size
  shapes = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0)},
      jax.numpy.zeros((1, crop, crop, 3), jax.numpy.float32), train=False))
  for name in config.stage_order:
    optim.make_optimizer(config.optimizer, config.stages[name],
                         shapes["params"], f"config.stages.{name}")


def set_input_normalisation(config: ml_collections.ConfigDict) -> None:
  """ImageNet weights define the input normalisation: ``config.data.mean``
  and ``std`` are set from them (in place; ``config.json`` records it)."""
  if (config.model.pretrained
      and config.model.get("backbone", "resnet") == "resnet"):
    prep = pretrained.preprocessing_for(config.model.pretrained)
    config.data.mean, config.data.std = prep["mean"], prep["std"]
    print(f"inputs normalised as the weights expect: {prep}", flush=True)


def load_splits(config: ml_collections.ConfigDict) -> tuple[Any, dict]:
  """``(builder, splits)``: the data set's builder, built once (a cached
  build is checked against its source files), and every split the run names
  (``pipeline.Split``s by name); a stage that trains segmentation needs
  lesion masks in the training split."""
  needs_masks = checks.needs_masks(config)
  builder = pipeline.make_builder(config.data, require_train_masks=needs_masks)
  splits = folds.load_splits(builder, config.data)
  if needs_masks and not splits[config.data.train_split].has_mask.any():
    raise errors.UserError(
        f"split {config.data.train_split!r} has no lesion masks "
        "but a stage has lambda_seg > 0")
  return builder, splits


def place_training_split(train_split: pipeline.Split, budget_mb: float, mesh):
  """``(host, device)``: uint8 ``images [N, S, S, 3]``, ``masks [N, S, S]``,
  ``labels [N]``, ``has_mask [N]`` on the host, and replicated on the devices
  if within ``budget_mb`` (else None)."""
  host = {"images": train_split.images, "masks": train_split.masks,
          "labels": train_split.labels, "has_mask": train_split.has_mask}
  # On the devices as uint8, batches are gathered and augmented inside jit;
  # a larger split streams from the host through grain, prefetched in
  # background threads.
  nbytes = sum(a.nbytes for a in host.values())
  resident = nbytes <= budget_mb * 2**20
  print(f"training split: {len(train_split)} examples, "
        f"{nbytes / 2**20:.0f} MiB, "
        f"{'on device' if resident else 'streamed from host'}", flush=True)
  return host, (sharding.put_replicated(host, mesh) if resident else None)


def setup(config: ml_collections.ConfigDict, workdir: str) -> Job:
  """Checks every setting, then builds the model, the mesh and the splits
  (``workdir`` records the data's source)."""
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  checks.resolve_config(config)
  set_input_normalisation(config)
  model = rapool_net.build_model(config.model, config.systems)
  check_stage_optimizers(config, model)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.train.batch_size, mesh)
  sharding.check_batch_size(config.train.eval_batch_size, mesh,
                            "train.eval_batch_size")
  builder, splits = load_splits(config)
  checks.check_loaded_data(config, workdir, splits, builder)
  host, dev = place_training_split(splits[config.data.train_split],
                                   config.data.device_memory_budget_mb, mesh)
  predict = evaluate.make_predict_fn(
      model, mesh, tuple(config.data.mean), tuple(config.data.std),
      config.train.eval_batch_size, config.data.crop_size)
  return Job(model=model, mesh=mesh,
             key=train.make_key(config.seed, config.systems.prng_impl),
             splits=splits, train_host=host, train_dev=dev, predict=predict,
             writer=progress.MetricWriter(os.path.join(workdir,
                                                       "tensorboard")))


# ----------------------------------------------------------------------------
# The stages.


def batch_stream(config, index: int) -> int:
  """Which batch order stage ``index`` draws (``pipeline.batch_indices``).

  Its own, except for arms (stages with ``init_from``): they all draw the
  first arm's, so arms differ only in what they ablate, not in their data."""
  order = config.stage_order
  if not config.stages[order[index]].get("init_from"):
    return index
  return next(i for i, n in enumerate(order) if config.stages[n].get("init_from"))


def step_args(job: Job, config, stream: int, start: int, stop: int):
  """Yields step ``start``..``stop - 1``'s arguments after the state.

  On-device data: the sharded index vector, the key and the split. Streamed
  data: the examples themselves, each process gathering only its own rows,
  prefetched by grain."""
  indices = lambda t: pipeline.batch_indices(  # noqa: E731
      config.seed, stream, t, config.train.batch_size,
      len(job.train_host["labels"]))
  if job.train_dev is not None:
    for t in range(start, stop):
      yield (sharding.put_global_batch(indices(t), job.mesh), job.key,
             job.train_dev)
    return
  for batch in sharding.stream_host_batches(
      job.train_host, indices, start, stop, config.train.batch_size, job.mesh):
    yield batch, job.key


def run_stage(job: Job, config, workdir: str, index: int, variables,
              finished: dict):
  """Stage ``config.stage_order[index]`` from ``variables`` (or its
  checkpoint); returns its final variables and meta."""
  name = config.stage_order[index]
  stage = config.stages[name]
  tx = optim.make_optimizer(config.optimizer, stage, variables["params"],
                            f"config.stages.{name}")
  state = train.create_train_state(job.model, variables, tx, job.mesh)
  step_fn = functools.partial(
      train.train_step if job.train_dev is None else train.resident_train_step,
      stage=stage, data=config.data, mean=tuple(config.data.mean),
      std=tuple(config.data.std))
  validate = None
  if config.data.val_split and (config.train.eval_every
                                or stage.plateau.metric):
    val = job.splits[config.data.val_split]
    validate = lambda v: evaluate.validation_metrics(  # noqa: E731
        job.predict(v, val, stage.pooling), val, config.data.crop_size)
  batches = functools.partial(step_args, job, config, batch_stream(config, index))
  return train.train_stage(state, step_fn, batches, name=name, config=config,
                           workdir=workdir, mesh=job.mesh, finished=finished,
                           validate=validate, writer=job.writer)


def run_stages(job: Job, config, workdir: str):
  """Step 1, then every stage in order; each reported stage's row. Returns
  ``(stage_variables, rows, finished)``."""
  variables = train.init_variables(job.model, job.key, config.data.crop_size,
                                   config.model)
  stage_variables, rows, finished = {}, [], {}
  for index, name in enumerate(config.stage_order):
    stage = config.stages[name]
    if stage.get("init_from"):  # an arm branching from an earlier stage
      variables = stage_variables[stage.init_from]
    variables, meta = run_stage(job, config, workdir, index, variables,
                                finished)
    stage_variables[name] = variables
    if stage.report_as:
      rows.append(stage_row(job, config, workdir, name, variables))
    finished[name] = {"steps": meta["step"]}
  return stage_variables, rows, finished


def stage_row(job: Job, config, workdir: str, name: str, variables) -> dict:
  """Reported stage ``name``'s row (its predictions written to
  ``workdir``)."""
  stage = config.stages[name]
  row = evaluate.evaluate_network(job.predict, job.splits, config.data,
                                  workdir, stage.report_as, variables,
                                  stage.pooling)
  print(report_lib.format_row(row), flush=True)
  return {**row, "stage": name}


# ----------------------------------------------------------------------------
# The job.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every stage, the heads and the evaluation; writes the report.
  Returns the results (``results.json``'s content). One writer per workdir:
  a second run on it stops at once (``checkpoint.hold_workdir``)."""
  os.makedirs(workdir, exist_ok=True)
  with checkpoint.hold_workdir(workdir):
    checks.check_resumed_config(config, workdir)
    use_compilation_cache(config)
    t0 = time.time()
    job = setup(config, workdir)
    write_config(config, workdir)
    stage_variables, rows, finished = run_stages(job, config, workdir)
    return write_results(job, config, workdir, stage_variables, rows,
                         finished, t0)


def use_compilation_cache(config) -> None:
  if config.systems.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      config.systems.compilation_cache_dir)


def write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))


def write_results(job: Job, config, workdir: str, stage_variables: dict,
                  rows: list, finished: dict, t0: float) -> dict:
  """After the stages: the linear heads' rows, ``results.json``, the report
  and the run record. Returns the results."""
  if config.rankopt.enabled:
    after = config.rankopt.after_stage
    for row in evaluate.fit_linear_heads(
        job.predict, job.splits, config.data, config.rankopt, workdir,
        stage_variables[after], config.stages[after].pooling):
      rows.append({**row, "stage": after})
      print(report_lib.format_row(row), flush=True)
  eval_split = job.splits[config.data.eval_split]
  results = {"data": config.data.name, "eval_split": config.data.eval_split,
             "num_eval_examples": len(eval_split), "rows": rows,
             "stages": finished}
  cams = [(config.stages[n].report_as, stage_variables[n],
           config.stages[n].pooling)
          for n in config.stage_order if config.stages[n].report_as]
  report_lib.write_report(workdir, config, results, job.model, cams,
                          eval_split)
  if jax.process_index() == 0:
    provenance.append_run_info(workdir, time.time() - t0, jax.devices())
    print(f"wrote {os.path.join(workdir, 'results.md')} "
          f"({time.time() - t0:.0f} s)", flush=True)
  return results
