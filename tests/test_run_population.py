"""A population run as the job: each member's workdir is its single run's."""

import csv
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
from rapool_jax import checkpoint as ckpt_lib
from rapool_jax import errors
from rapool_jax import evaluate
from rapool_jax import population
from rapool_jax import run
from rapool_jax import run_population as run_pop

Member = population.Member


def test_members_are_every_seed_by_fold_seed_major():
  assert run_pop.make_members([0, 1], [2, 0]) == [
      Member(0, 2), Member(0, 0), Member(1, 2), Member(1, 0)]
  assert run_pop.make_members([3], []) == [Member(3, None)]


def _main(tmp_path, *args):
  """``python -m rapool_jax.main`` on the tiny config with ``args``."""
  return subprocess.run(
      [sys.executable, "-m", "rapool_jax.main", "--config", "configs/tiny.py",
       "--workdir", str(tmp_path / "w"), *args],
      cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0,a"], "--seeds=0,a: comma-separated integers expected"),
    (["--seeds", "0", "--folds", "1.5"],
     "--folds=1.5: comma-separated integers expected"),
    # Two members of one seed and fold would train the same run twice.
    (["--seeds", "0,0"], "--seeds=0,0: [0] given more than once"),
    (["--seeds", "0,1", "--folds", "2,1,2"],
     "--folds=2,1,2: [2] given more than once"),
])
def test_a_bad_seed_or_fold_stops_in_one_line_before_any_work(tmp_path, args,
                                                              message):
  out = _main(tmp_path, *args)
  assert out.returncode != 0 and message in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "w").exists()


def _cv_config(config):
  """The tiny config on 3-fold cross-validation, scored on the test split,
  with predictions on every split a fold run reports."""
  config.data.crossval.num_folds = 3
  config.data.train_split, config.data.val_split = "cv_train", "cv_val"
  config.data.eval_split = "test"
  config.data.report_splits = ("cv_test", "cv_val", "test")
  config.rankopt.threshold_split = "cv_val"
  config.report.num_cam_images = 0
  # An arm that branches from Step 3, as the cross-validation's do.
  arm = config.stages.joint.copy_and_resolve_references()
  arm.update(dict(pooling="gap", report_as="GAP arm",
                  init_from="segmentation"))
  config.stages.joint_gap = arm
  config.stage_order = (*config.stage_order, "joint_gap")
  return config


def _predictions(workdir):
  """``{split/arm.csv: (ids, labels, scores)}`` of a run's workdir."""
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, "predictions", "*",
                                            "*.csv"))):
    with open(path) as f:
      rows = list(csv.DictReader(f))
    out[os.path.relpath(path, workdir)] = (
        [r["image"] for r in rows], [r["label"] for r in rows],
        np.array([float(r["score"]) for r in rows]))
  return out


def _assert_same_predictions(got, want, networks, atol, head_tol):
  """Networks' probabilities within ``atol``; the linear heads' scores
  (unbounded, fit by an optimiser that amplifies the features' rounding)
  within ``head_tol``, absolute and relative."""
  assert sorted(got) == sorted(want) and got
  for name, (ids, labels, scores) in want.items():
    assert got[name][:2] == (ids, labels), name
    tol = ((atol, 0) if os.path.basename(name) in networks
           else (head_tol, head_tol))
    np.testing.assert_allclose(got[name][2], scores, atol=tol[0],
                               rtol=tol[1], err_msg=name)


@pytest.mark.slow  # a population of two, two single runs, a resumed population
def test_population_members_are_the_single_runs_and_resume(tiny_config,
                                                            tmp_path):
  config = _cv_config(tiny_config)
  members = [Member(0, 0), Member(1, 2)]
  root = str(tmp_path / "pop")
  results = run_pop.run_population(config.copy_and_resolve_references(),
                                   members, root)
  got = [_predictions(run_pop.member_dir(root, p)) for p in range(2)]
  networks = {f"{evaluate.row_slug(config.stages[n].report_as)}.csv"
              for n in config.stage_order if config.stages[n].report_as}
  for p, m in enumerate(members):
    out = run_pop.member_dir(root, p)
    # An ordinary run's workdir, which the tools read unchanged.
    with open(os.path.join(out, "config.json")) as f:
      saved = json.load(f)
    assert (saved["seed"], saved["data"]["crossval"]["fold"]) == (m.seed,
                                                                  m.fold)
    with open(os.path.join(out, "results.json")) as f:
      assert json.load(f)["rows"] == results[p]["rows"]
    assert os.path.isfile(os.path.join(out, "results.md"))
    for name in config.stage_order:  # what predict.load_run reads
      assert os.listdir(ckpt_lib.stage_dir(out, name))
    single = str(tmp_path / f"single{p}")
    want = run.train_and_evaluate(population.member_config(config, m), single)
    _assert_same_predictions(got[p], _predictions(single), networks,
                             atol=1e-4, head_tol=1e-3)
    assert [r["model"] for r in want["rows"]] == [
        r["model"] for r in results[p]["rows"]]
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(
      os.path.join(root, "tensorboard"), size_guidance={"scalars": 0})
  events.Reload()
  tags = set(events.Tags()["scalars"])
  for name in config.stage_order:   # the members' mean, the worst, lr
    assert {f"{name}/train/loss", f"{name}/train/loss_max",
            f"{name}/train/lr"} <= tags, tags

  # Killed in the joint stage, before any member was written out.
  for p in range(2):
    shutil.rmtree(run_pop.member_dir(root, p))
  stage_dir = ckpt_lib.stage_dir(root, "joint")
  for name in os.listdir(stage_dir):
    if not (name.isdigit() and int(name) <= 2):
      shutil.rmtree(os.path.join(stage_dir, name))
  run_pop.run_population(config.copy_and_resolve_references(), members, root)
  for p in range(2):
    _assert_same_predictions(_predictions(run_pop.member_dir(root, p)), got[p],
                             networks, atol=0, head_tol=0)


def test_a_population_uses_the_compilation_cache_as_a_run_does(
    tiny_config, tmp_path, monkeypatch):
  """``config.systems.compilation_cache_dir`` is applied before anything is
  compiled, as ``run.train_and_evaluate`` applies it."""
  cache = str(tmp_path / "cache")
  tiny_config.systems.compilation_cache_dir = cache
  seen = []

  def stop_at_setup(*args):
    seen.append(jax.config.jax_compilation_cache_dir)
    raise KeyboardInterrupt  # nothing past the cache setting is needed

  monkeypatch.setattr(run_pop, "setup", stop_at_setup)
  before = jax.config.jax_compilation_cache_dir
  try:
    with pytest.raises(KeyboardInterrupt):
      run_pop.run_population(tiny_config, [Member(seed=0)],
                             str(tmp_path / "w"))
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
  assert seen == [cache]
