"""Stratified k-fold cross-validation of every Step-4 arm, scored out of fold.

    python -m launch.crossval --workdir runs/crossval [--folds 0,1,2,3,4]
        [--seeds 0,1,2 | --num-seeds 3] [--population] [--out DIR]
        [--exclude-images FILE | --near-copies-from RUN_DIR] [-- OVERRIDES]

``configs/isic2017.py:crossval`` (or ``--config``) per fold and seed into
``WORKDIR/fold<F>_seed<S>/``, or with ``--population`` all of them as one job
in ``WORKDIR/population/``; then the tables (``launch/crossval_report.py``)
in ``--out`` (default ``WORKDIR/report``). ``--smoke``: ``configs/tiny.py``,
3 folds, synthetic data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from launch import common
from launch import crossval_report
from launch import fanout
from rapool_jax import errors
from rapool_jax import population
from rapool_jax import run_population

DEFAULT_CONFIG = "configs/isic2017.py:crossval"
POPULATION = "population"  # the --population job's name and folder
SMOKE_OVERRIDES = (
    "--config.data.crossval.num_folds=3",
    "--config.data.train_split=cv_train",
    "--config.data.val_split=cv_val",
    "--config.data.eval_split=cv_test",
    "--config.data.crossval.source_splits=('train','validation','test')",
    "--config.rankopt.threshold_split=cv_val",
    "--config.rankopt.logistic_regression=True")


def run_name(fold: int, seed: int) -> str:
  return f"fold{fold}_seed{seed}"


def make_jobs(config: str, root: str, folds, seeds, overrides,
              num_folds: int, as_population: bool = False) -> list[fanout.Job]:
  """The data-preparing job, then one main-job run per (fold, seed), or
  with ``as_population`` one population of them all (``population_job``)."""
  if not any(o.startswith("--config.data.crossval.num_folds=")
             for o in overrides):
    overrides = [*overrides, f"--config.data.crossval.num_folds={num_folds}"]
  jobs = [fanout.prepare_job(root, config, list(overrides))]
  if as_population:
    return jobs + [population_job(config, root, folds, seeds, overrides)]
  for seed in seeds:
    for fold in folds:
      jobs.append(fanout.Job(
          name=run_name(fold, seed),
          workdir=os.path.join(root, run_name(fold, seed)), config=config,
          overrides=list(overrides) + [
              f"--config.data.crossval.fold={fold}", f"--config.seed={seed}"],
          meta={"fold": fold, "seed": seed}))
  return jobs


def population_job(config: str, root: str, folds, seeds,
                   overrides) -> fanout.Job:
  """Every (fold, seed) as one population in ``ROOT/population/``. Members
  are written out and evaluated in order, so the job is done when its last
  member has its ``results.json``."""
  members = run_population.make_members(seeds, folds)
  last = run_population.member_dir("", len(members) - 1)
  return fanout.Job(
      name=POPULATION, workdir=os.path.join(root, POPULATION), config=config,
      overrides=list(overrides) + [f"--seeds={','.join(map(str, seeds))}",
                                   f"--folds={','.join(map(str, folds))}"],
      done_file=os.path.join(last, "results.json"),
      meta={"runs": [[m.fold, m.seed] for m in members]})


def finished_runs(jobs) -> tuple[list[str], list[tuple[int, int]]]:
  """The workdirs of the finished (fold, seed) runs, and every (fold, seed)
  the CV was meant to have. A population's member is finished once it has
  its ``results.json`` (its ``members.json`` says which member is which)."""
  runs = jobs[1:]
  if runs[0].name != POPULATION:
    return ([j.workdir for j in runs if fanout.is_finished(j)],
            [(j.meta["fold"], j.meta["seed"]) for j in runs])
  expected = [tuple(r) for r in runs[0].meta["runs"]]
  manifest = os.path.join(runs[0].workdir, population.MANIFEST)
  members = {}
  if os.path.exists(manifest):  # written when the first stage starts
    with open(manifest) as f:
      members = {(m["fold"], m["seed"]): run_population.member_dir(
          runs[0].workdir, p) for p, m in enumerate(json.load(f)["members"])}
  return ([members[k] for k in expected if k in members and os.path.exists(
      os.path.join(members[k], "results.json"))], expected)


def parse_args(argv) -> tuple[argparse.Namespace, list[str]]:
  parser = common.parser(__doc__, "configs/tiny.py, 3 folds, synthetic data",
                         "root of the fold runs")
  parser.add_argument("--folds", default="",
                      help="comma-separated folds to run (default: all)")
  parser.add_argument("--seeds", default="0",
                      help="comma-separated seeds (default 0)")
  parser.add_argument("--num-seeds", type=int, default=0,
                      help="seeds 0 .. N-1 (instead of --seeds)")
  parser.add_argument("--population", action="store_true",
                      help="train every fold x seed as one population, one "
                           "job on one device, in WORKDIR/population/")
  crossval_report.add_near_copy_args(parser)
  parser.add_argument("--out", default="",
                      help="folder of the pooled table (default WORKDIR/report)")
  return common.parse_args(parser, argv)


def report(args, jobs) -> int:
  """The tables of the finished runs; 0 when every run has finished."""
  finished, expected = finished_runs(jobs)
  if not finished:
    print("no fold has finished yet; nothing to report", flush=True)
    return 1
  crossval_report.write_report(
      finished, args.out or os.path.join(args.workdir, "report"),
      expected=expected, exclude_images=crossval_report.near_copy_choice(args))
  return 0 if len(finished) == len(expected) else 1


def main(argv=None) -> int:
  args, overrides = parse_args(argv)
  config = common.resolve_config(args.config or (None if args.smoke
                                                 else DEFAULT_CONFIG),
                                 args.smoke)
  num_folds = common.load_config(config).data.crossval.num_folds or 3
  if args.smoke:
    overrides, num_folds = [*SMOKE_OVERRIDES, *overrides], 3
  folds = ([int(f) for f in args.folds.split(",") if f] if args.folds
           else list(range(num_folds)))
  seeds = (list(range(args.num_seeds)) if args.num_seeds
           else [int(s) for s in args.seeds.split(",") if s])
  jobs = make_jobs(config, args.workdir, folds, seeds, overrides, num_folds,
                   args.population)
  if not fanout.execute(args, jobs, args.workdir):
    return 0
  return report(args, jobs)


if __name__ == "__main__":
  with errors.one_line_errors():
    sys.exit(main())
