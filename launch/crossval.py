"""Stratified k-fold cross-validation of every Step-4 arm, scored out of fold.

    python launch/crossval.py --workdir runs/crossval [--folds 0,1,2,3,4]
        [--seeds 0,1,2 | --num-seeds 3] [--out results/crossval_isic2017]
        [--exclude-images FILE | --near-copies-from RUN_DIR]
        [-- --config.data.manual_dir=PATH --config.data.data_dir=DIR ...]

Runs ``configs/isic2017.py:crossval`` (or ``--config``) once per fold and seed
into ``WORKDIR/fold<F>_seed<S>/``: each run trains Steps 2-3 once and every
Step-4 arm from the same state, then writes per-image predictions of every arm
on its held-out fold (``cv_test``) and on its inner validation split
(``cv_val``, where thresholds are set), and, when the config lists it in
``data.report_splits``, on the official test split. Seeds run one after
another. Running the command again resumes: a finished fold is skipped and an
interrupted one continues from its last checkpoint. The out-of-fold and
test-split tables are then written to ``--out`` (see
``launch/crossval_report.py``; a partial banner names the fold runs still
missing); ``--report-only`` rebuilds them without running.
``--exclude-images FILE`` lists the test images with a near-copy in train +
validation, reported with and without them (``--near-copies-from RUN_DIR``
finds them on that fold run's data with ``folds.near_copies``).
``--smoke``: ``configs/tiny.py`` with 3 folds on the synthetic data.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python launch/crossval.py`
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch import common  # noqa: E402
from launch import crossval_report  # noqa: E402
from launch import fanout  # noqa: E402

DEFAULT_CONFIG = "configs/isic2017.py:crossval"


def run_name(fold: int, seed: int) -> str:
  return f"fold{fold}_seed{seed}"


def make_jobs(config: str, root: str, folds, seeds, overrides,
              num_folds: int) -> list[fanout.Job]:
  """The data-preparing job, then one main-job run per (fold, seed)."""
  extra = [] if any(o.startswith("--config.data.crossval.num_folds=")
                    for o in overrides) else [
                        f"--config.data.crossval.num_folds={num_folds}"]
  jobs = [fanout.prepare_job(root, config, list(overrides) + extra)]
  for seed in seeds:
    for fold in folds:
      jobs.append(fanout.Job(
          name=run_name(fold, seed),
          workdir=os.path.join(root, run_name(fold, seed)), config=config,
          overrides=list(overrides) + extra + [
              f"--config.data.crossval.fold={fold}", f"--config.seed={seed}"],
          meta={"fold": fold, "seed": seed}))
  return jobs


def main(argv=None) -> int:
  argv, overrides = fanout.split_overrides(
      sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="")
  parser.add_argument("--workdir", required=True, help="root of the fold runs")
  parser.add_argument("--folds", default="",
                      help="comma-separated folds to run (default: all)")
  parser.add_argument("--seeds", default="0",
                      help="comma-separated seeds (default 0)")
  parser.add_argument("--num-seeds", type=int, default=0,
                      help="seeds 0 .. N-1 (instead of --seeds)")
  crossval_report.add_near_copy_args(parser)
  parser.add_argument("--out", default="",
                      help="folder of the pooled table (default WORKDIR/report)")
  parser.add_argument("--smoke", action="store_true")
  fanout.add_runner_args(parser)
  args = parser.parse_args(argv)
  config = common.resolve_config(args.config or (None if args.smoke
                                                 else DEFAULT_CONFIG),
                                 args.smoke)
  cfg = common.load_config(config)
  num_folds = cfg.data.crossval.num_folds or 3
  if args.smoke:
    overrides = ["--config.data.crossval.num_folds=3",
                 "--config.data.train_split=cv_train",
                 "--config.data.val_split=cv_val",
                 "--config.data.eval_split=cv_test",
                 "--config.data.crossval.source_splits=('train','validation','test')",
                 "--config.rankopt.threshold_split=cv_val",
                 "--config.rankopt.logistic_regression=True"] + overrides
    num_folds = 3
  folds = ([int(f) for f in args.folds.split(",") if f] if args.folds
           else list(range(num_folds)))
  seeds = (list(range(args.num_seeds)) if args.num_seeds
           else [int(s) for s in args.seeds.split(",") if s])
  jobs = make_jobs(config, args.workdir, folds, seeds, overrides, num_folds)
  if not fanout.execute(args, jobs, args.workdir):
    return 0
  out = args.out or os.path.join(args.workdir, "report")
  finished = [j for j in jobs[1:] if fanout.is_finished(j)]
  if not finished:
    print("no fold has finished yet; nothing to report", flush=True)
    return 1
  crossval_report.write_report(
      [j.workdir for j in finished], out,
      expected=[(j.meta["fold"], j.meta["seed"]) for j in jobs[1:]],
      exclude_images=crossval_report.near_copy_choice(args))
  return 0 if len(finished) == len(jobs) - 1 else 1


if __name__ == "__main__":
  sys.exit(main())
