"""Where region pooling matters: RAP against the GAP control by artefact
stratum, on images with the lesion taken away, by CAM energy inside the
lesion, and on trap sets (``results/robustness_isic2017/HYPOTHESES.md``).

    python -m launch.robustness --out results/robustness_isic2017 \\
        --cv-workdir runs/cv_r1 --trap-workdir runs/trap [--train]
    python -m launch.robustness --check results/robustness_isic2017

The strata use the CV's committed per-image scores (``--cv-scores``). Every
finished fold run under ``--cv-workdir`` scores its held-out fold in the four
versions of ``disrupt.py`` with each arm, with the CAM energy inside the true
mask; runs already in ``versions.csv`` are skipped, so the command resumes.
``--train`` first runs the CV's own command for missing fold runs. Trap runs
(``--trap-workdir``, one ``main`` run per bias and seed, ``COMMAND.md``) are
read from their held-out predictions. Tables and figures are then computed
from the CSVs in ``--out`` alone; ``--check`` recomputes them and fails where
a figure differs (a tampered CSV or table).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import ml_collections
import numpy as np
import pandas as pd

from launch import crossval
from rapool_jax import disrupt
from rapool_jax import errors
from rapool_jax import evaluate
from rapool_jax import predict
from rapool_jax.analysis import robustness_report as report
from rapool_jax.data import folds
from rapool_jax.data import pipeline

ARMS = {"joint": "RAP", "gap_control": "GAP control"}
A, B = ARMS.values()
ARTEFACTS = "../shared/data/isic2017-artefacts/artefacts.csv"


def finished_runs(root: str, pattern: str) -> list[str]:
  return sorted(os.path.dirname(p) for p in glob.glob(
      os.path.join(root, pattern, "results.json")))


def run_config(run_dir: str, data_dir: str):
  """A fold run's saved config, its data read from ``data_dir`` if given."""
  with open(os.path.join(run_dir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  config.data.data_dir = data_dir or config.data.data_dir
  return config


def score_run(run_dir: str, data_dir: str, cache: dict) -> pd.DataFrame:
  """A row per held-out image x version: each arm's softmax and CAM energy;
  the whole version checked against the run's own predictions."""
  config = run_config(run_dir, data_dir)
  fold, seed = config.data.crossval.fold, config.seed
  split = held_out(config, cache)
  frames = []
  for version in disrupt.VERSIONS:
    images = disrupt.disrupt(split.images, split.masks, version)
    frame = pd.DataFrame({"image": split.ids, "label": split.labels,
                          "fold": fold, "seed": seed, "version": version})
    for arm, name in ARMS.items():
      frame[name], frame[f"cam {name}"] = predict.score_arrays(
          run_dir, arm, images, split.masks)
      if version == "whole":
        own = pd.read_csv(evaluate.predictions_path(
            run_dir, masked_split(config), config.stages[arm].report_as))
        gap = np.abs(own.score.to_numpy() - frame[name].to_numpy()).max()
        if gap > 1e-4:
          raise RuntimeError(f"{run_dir}: {arm} rescored {gap:.2g} away "
                             "from its own predictions")
    frames.append(frame)
  return pd.concat(frames)


def update_versions(run_dirs: list[str], out: str, data_dir: str) -> None:
  """Appends the runs not yet in ``out/versions.csv``."""
  path = os.path.join(out, "versions.csv")
  done = pd.read_csv(path) if os.path.exists(path) else pd.DataFrame()
  have = set(zip(done.get("fold", []), done.get("seed", [])))
  cache = {}
  for run_dir in run_dirs:
    config = run_config(run_dir, data_dir)
    if (config.data.crossval.fold, config.seed) in have:
      continue
    print(f"scoring {run_dir} in {len(disrupt.VERSIONS)} versions", flush=True)
    done = pd.concat([done, score_run(run_dir, data_dir, cache)])
    done.to_csv(path, index=False, float_format="%.7g")


def masked_split(config) -> str:
  """Where a run's images have true masks and its own predictions: a CV
  run's held-out fold, an official-splits run's validation split (the
  shared copy has no test masks)."""
  return "cv_test" if config.data.crossval.num_folds else config.data.val_split


def held_out(config, cache: dict):
  """The run's ``masked_split``, as stored (no trap drawn in), cached by
  fold."""
  fold, name = config.data.crossval.fold, masked_split(config)
  if (fold, name) not in cache:
    data = config.data.copy_and_resolve_references()
    data.trap = ml_collections.ConfigDict(dict(kind="", bias=0.0, seed=0))
    data.report_splits = ()
    cache[fold, name] = folds.load_splits(pipeline.make_builder(data),
                                          data)[name]
  return cache[fold, name]


def run_properties(run_dir: str, data_dir: str) -> dict:
  """A run's recipe (width, crop, Step-4 steps) and its segmentation's
  Jaccard: RAP's mean per-image Jaccard on its masked split."""
  config = run_config(run_dir, data_dir)
  rap = pd.read_csv(evaluate.predictions_path(
      run_dir, masked_split(config), config.stages.joint.report_as))
  return {"fold": config.data.crossval.fold, "seed": config.seed,
          "depth": config.model.depth, "width": config.model.width,
          "crop px": config.data.crop_size,
          "Step-4 steps": config.stages.joint.max_steps,
          "Jaccard RAP": rap.jaccard.mean(), "masked images": len(rap)}


def update_runs(run_dirs: list[str], out: str, data_dir: str) -> None:
  """``out/runs.csv``: ``run_properties`` per run, rows of runs no longer
  on disk kept."""
  path = os.path.join(out, "runs.csv")
  rows = pd.DataFrame([run_properties(d, data_dir) for d in run_dirs])
  if os.path.exists(path):
    rows = pd.concat([pd.read_csv(path), rows]).drop_duplicates(
        ["fold", "seed"], keep="last")
  rows.sort_values(["fold", "seed"]).to_csv(path, index=False,
                                            float_format="%.7g")


def official_strata_scores(run_dirs: list[str], data_dir: str,
                           out: str) -> None:
  """``out/strata_scores.csv`` of official-splits runs: each arm's test
  score per image averaged over the runs (seeds)."""
  rows = []
  for run_dir in run_dirs:
    config = run_config(run_dir, data_dir)
    for arm, name in ARMS.items():
      rows.append(pd.read_csv(evaluate.predictions_path(
          run_dir, config.data.eval_split, config.stages[arm].report_as))[
              ["image", "label", "score"]].assign(arm=name,
                                                  seed=config.seed))
  long = pd.concat(rows)
  wide = long.pivot_table(index=["image", "label"], columns="arm",
                          values="score", aggfunc="mean").reset_index()
  wide = wide.assign(split="test", fold=0, models=long.seed.nunique())
  wide[["split", "image", "fold", "label", "models", A, B]].to_csv(
      os.path.join(out, "strata_scores.csv"), index=False,
      float_format="%.7g")


def trap_scores(root: str, data_dir: str) -> pd.DataFrame:
  """A row per held-out image x trap run: bias, seed, each arm's softmax on
  its held-out images (link reversed) and on the same images clean."""
  frames, cache = [], {}
  for run_dir in finished_runs(root, "bias*_seed*"):
    config = run_config(run_dir, data_dir)
    split = held_out(config, cache)
    frame = pd.DataFrame({"image": split.ids, "label": split.labels,
                          "fold": config.data.crossval.fold,
                          "seed": config.seed, "bias": config.data.trap.bias})
    for arm, name in ARMS.items():
      own = pd.read_csv(evaluate.predictions_path(
          run_dir, "cv_test", config.stages[arm].report_as))
      if list(own.image) != list(split.ids):
        raise RuntimeError(f"{run_dir}: held-out images differ from its fold")
      frame[name] = own.score.to_numpy()
      frame[f"clean {name}"] = predict.score_arrays(
          run_dir, arm, split.images, split.masks)[0]
    frames.append(frame)
  return pd.concat(frames) if frames else pd.DataFrame()


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="results/robustness_isic2017")
  p.add_argument("--cv-scores", default="results/crossval_isic2017",
                 help="folder of the CV's oof_scores.csv and test_scores.csv")
  p.add_argument("--cv-workdir", default="", help="root of the CV fold runs")
  p.add_argument("--trap-workdir", default="", help="root of the trap runs")
  p.add_argument("--data-dir", default="", help="TFDS data_dir of the runs")
  p.add_argument("--recipe2-workdir", default="",
                 help="root of recipe 2's runs (runlocal,testsplit, seed*)")
  p.add_argument("--recipe2-data-dir", default="",
                 help="TFDS data_dir of recipe 2's runs")
  p.add_argument("--artefacts", default=ARTEFACTS)
  p.add_argument("--train", action="store_true",
                 help="first run the CV command for missing fold runs")
  p.add_argument("--check", default="", metavar="DIR",
                 help="recompute every figure of DIR from its CSVs")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args.check:
    return report.check(args.check, args.artefacts)
  os.makedirs(args.out, exist_ok=True)
  if args.train:
    crossval.main(["--workdir", args.cv_workdir, "--seeds", "0,1,2", "--",
                   "--config.data.manual_dir=../shared/data/isic2017-256",
                   f"--config.data.data_dir={args.data_dir}",
                   "--config.stage_order=('classification','segmentation',"
                   "'joint','gap_control')"])
  report.write_strata_scores(args.cv_scores, ARMS, args.out)
  if args.cv_workdir:
    runs = (finished_runs(args.cv_workdir, "fold*_seed*")
            + finished_runs(args.cv_workdir, "population/member*"))
    update_versions(runs, args.out, args.data_dir)
    update_runs(runs, args.out, args.data_dir)
  if args.recipe2_workdir:
    runs = finished_runs(args.recipe2_workdir, "seed*")
    if not runs:
      raise errors.UserError(f"--recipe2-workdir={args.recipe2_workdir}: no "
                             "finished run (seed*/results.json) under it")
    sub = os.path.join(args.out, report.RECIPE2)
    os.makedirs(sub, exist_ok=True)
    official_strata_scores(runs, args.recipe2_data_dir, sub)
    update_versions(runs, sub, args.recipe2_data_dir)
    update_runs(runs, sub, args.recipe2_data_dir)
  if args.trap_workdir:
    trap = trap_scores(args.trap_workdir, args.data_dir)
    if len(trap):
      trap.to_csv(os.path.join(args.out, "trap.csv"), index=False,
                  float_format="%.7g")
  report.write(args.out, args.artefacts)
  return 0


if __name__ == "__main__":
  with errors.one_line_errors():
    sys.exit(main())
