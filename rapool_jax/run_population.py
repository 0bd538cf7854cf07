"""Seeds x folds as one population: ``run_population(config, members, workdir)``.

    python -m rapool_jax.main --config configs/isic2017.py:crossval
        --workdir DIR --seeds 0,1,2 --folds 0,1,2,3,4 [--config.x=y ...]

Every member is checked before any data is built; the data is built once;
every stage trains all members as one program (``population.Population``),
checkpointed in ``DIR`` beside ``members.json``. Then each member is written
out as an ordinary run's workdir, ``DIR/member<p>/``, with what its single
run writes (predictions, heads, results), for ``predict`` and ``launch/`` to
read as single runs. The same command resumes a killed population.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np

from rapool_jax import checkpoint as ckpt_lib
from rapool_jax import checks
from rapool_jax import errors
from rapool_jax import evaluate
from rapool_jax import population
from rapool_jax import run
from rapool_jax import sharding
from rapool_jax.data import folds
from rapool_jax.data import pipeline
from rapool_jax.data import trap


def member_dir(workdir: str, index: int) -> str:
  return os.path.join(workdir, f"member{index}")


def make_members(seeds: Sequence[int], fold_list: Sequence[int]
                 ) -> list[population.Member]:
  """Every seed x fold, seed-major as ``launch/crossval.py`` orders its runs
  (no folds: the config's fold)."""
  return [population.Member(s, f) for s in seeds for f in (fold_list or [None])]


# ----------------------------------------------------------------------------
# Before the first step.


def load_data(config, members):
  """``(builder, splits, (split, rows))``: the data set's builder (built
  once), each member's splits ``{name: Split}``, as its single run's
  ``run.load_splits`` gives them, and the split the members train on with
  each one's rows ``[N_p]`` of it. Each stored split and the pooled
  cross-validation data load once."""
  data = config.data
  configs = [population.member_config(config, m) for m in members]
  names = {data[r] for r in pipeline.SPLIT_ROLES}
  names = (names | set(data.get("report_splits", ()))) - {""}
  needs_masks = any(checks.needs_masks(c) for c in configs)
  builder = pipeline.make_builder(data, require_train_masks=needs_masks)
  stored = {n: pipeline.load_split(builder, n, data.task)
            for n in sorted(names - set(pipeline.CV_SPLITS))}
  if not names & set(pipeline.CV_SPLITS):
    stored = trap.apply_to_splits(stored, data)
    splits, pooled = [stored] * len(members), None
  elif data.trap.kind:
    # Members share the pooled training images; a trap reverses the link
    # on each member's own held-out fold, so those cannot be shared.
    raise errors.UserError(
        "config.data.trap.kind: a trap set on cross-validation splits runs "
        "one fold per main job, not as a population (--seeds/--folds)")
  else:
    folds.check_crossval(data)
    pooled = folds.concat([stored.get(s) or pipeline.load_split(
        builder, s, data.task) for s in data.crossval.source_splits])
    splits = [{**stored, **folds.crossval_splits(pooled, c.data.crossval)}
              for c in configs]
  if data.train_split in pipeline.CV_SPLITS:
    train = (pooled, [population.member_rows(pooled, c.data) for c in configs])
  else:
    n = len(stored[data.train_split])
    train = (stored[data.train_split],
             [np.arange(n, dtype=np.int32)] * len(members))
  if needs_masks and not train[0].has_mask.any():
    raise errors.UserError(
        f"split {data.train_split!r} has no lesion masks but a "
        "stage has lambda_seg > 0")
  return builder, splits, train


def setup(config, members, workdir: str):
  """Checks every member's config and data, then builds the population and
  the prediction function: ``(pop, splits per member, predict)``."""
  population.check_members(config, members)
  for m in members:
    run.validate_config(population.member_config(config, m))
  checks.resolve_config(config)
  run.set_input_normalisation(config)
  builder, splits, train = load_data(config, members)
  for p, m in enumerate(members):
    os.makedirs(member_dir(workdir, p), exist_ok=True)
    checks.check_loaded_data(population.member_config(config, m),
                             member_dir(workdir, p), splits[p], builder)
  pop = population.Population(config, members, data=train)
  run.check_stage_optimizers(config, pop.model)
  sharding.check_batch_size(config.train.eval_batch_size, pop.mesh,
                            "train.eval_batch_size")
  predict = evaluate.make_predict_fn(
      pop.model, pop.mesh, tuple(config.data.mean), tuple(config.data.std),
      config.train.eval_batch_size, config.data.crop_size)
  return pop, splits, predict


# ----------------------------------------------------------------------------
# Training and each member's evaluation.


def train_stages(pop: population.Population, workdir: str):
  """Step 1, then every stage for all members; ``(stacked variables by
  stage, finished)``. Arms start from the stage they branch from."""
  config = pop.config
  variables, stacked, finished = pop.init_variables(), {}, {}
  for index, name in enumerate(config.stage_order):
    if config.stages[name].get("init_from"):
      variables = stacked[config.stages[name].init_from]
    variables, meta = pop.run_stage(workdir, run.batch_stream(config, index),
                                    name, variables, finished)
    stacked[name] = variables
    finished[name] = {"steps": meta["step"]}
  return stacked, finished


def write_member(pop, index: int, workdir: str, splits: dict, predict,
                 stacked: dict, finished: dict, t0: float) -> dict:
  """Member ``index`` as an ordinary run's workdir (``member_dir``): its
  stage checkpoints, and what its single run evaluates and writes; returns
  its results."""
  out = member_dir(workdir, index)
  for name, variables in stacked.items():
    pop.write_member(workdir, name, variables, index, out)
  config = population.member_config(pop.config, pop.members[index])
  job = run.Job(model=pop.model, mesh=pop.mesh, key=None, splits=splits,
                train_host=None, train_dev=None, predict=predict, writer=None)
  variables = {name: population.member(v, index) for name, v in stacked.items()}
  rows = [run.stage_row(job, config, out, name, variables[name])
          for name in config.stage_order if config.stages[name].report_as]
  return run.write_results(job, config, out, variables, rows, dict(finished),
                           t0)


def run_population(config, members: Sequence[population.Member],
                   workdir: str) -> list[dict]:
  """Trains ``members`` as one population in ``workdir`` and writes each as
  ``workdir/member<p>/``; returns each member's results (its
  ``results.json``). One writer per workdir (``checkpoint.hold_workdir``)."""
  os.makedirs(workdir, exist_ok=True)
  with ckpt_lib.hold_workdir(workdir):
    checks.check_resumed_config(config, workdir)
    run.use_compilation_cache(config)  # as a single run does
    t0 = time.time()
    pop, splits, predict = setup(config, members, workdir)
    run.write_config(config, workdir)
    stacked, finished = train_stages(pop, workdir)
    return [write_member(pop, p, workdir, splits[p], predict, stacked,
                         finished, t0) for p in range(len(members))]
