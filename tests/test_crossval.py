"""Cross-validation: folds, Step-4 arms branching from one state, the pooled report."""

import csv
import dataclasses
import json
import os

import ml_collections
import numpy as np
import pytest

from launch import crossval
from launch import crossval_report
from rapool_jax import checks
from rapool_jax import evaluate
from rapool_jax import run
from rapool_jax import train
from rapool_jax.data import folds
from rapool_jax.data import pipeline


def _pooled(n=103, n_pos=21, size=4):
  labels = np.zeros(n, np.int32)
  labels[np.random.default_rng(1).permutation(n)[:n_pos]] = 1
  return pipeline.Split(
      images=np.arange(n, dtype=np.uint8)[:, None, None, None]
      * np.ones((1, size, size, 3), np.uint8),
      masks=np.zeros((n, size, size), np.uint8), labels=labels,
      has_mask=np.ones(n, bool),
      ids=np.array([f"ISIC_{i:07d}" for i in range(n)]))


def _cv(fold, k=5, seed=0):
  return ml_collections.ConfigDict(dict(num_folds=k, fold=fold, seed=seed,
                                        val_fraction=0.1))


def test_folds_are_stratified_deterministic_and_id_based():
  split = _pooled()
  f = folds.assign_folds(split.ids, split.labels, 5, seed=0)
  for k in range(5):
    # Each class is dealt from fold 0: totals differ by at most one per class.
    assert abs((f == k).sum() - 103 / 5) <= 2
    assert abs(split.labels[f == k].sum() - 21 / 5) <= 1
  np.testing.assert_array_equal(f, folds.assign_folds(split.ids, split.labels,
                                                      5, seed=0))
  assert not np.array_equal(f, folds.assign_folds(split.ids, split.labels, 5,
                                                  seed=1))
  # The same image gets the same fold whatever order the rows come in.
  order = np.random.default_rng(2).permutation(103)
  np.testing.assert_array_equal(
      folds.assign_folds(split.ids[order], split.labels[order], 5, 0), f[order])


def test_crossval_splits_partition_every_fold():
  split = _pooled()
  tested = []
  for k in range(5):
    s = folds.crossval_splits(split, _cv(k))
    ids = [set(s[n].ids) for n in folds.CV_SPLITS]
    assert sum(map(len, ids)) == 103 and len(set.union(*ids)) == 103
    assert s["cv_val"].labels.sum() >= 1 and (s["cv_val"].labels == 0).sum() >= 1
    assert abs(len(s["cv_val"]) - 0.1 * (103 - len(s["cv_test"]))) <= 2
    # Rows travel with their ids.
    np.testing.assert_array_equal(
        s["cv_test"].images[:, 0, 0, 0],
        [int(i[5:]) for i in s["cv_test"].ids])
    tested += list(s["cv_test"].ids)
  assert sorted(tested) == sorted(split.ids)  # each image scored exactly once
  with pytest.raises(ValueError, match="crossval.fold=5"):
    folds.crossval_splits(split, _cv(5))


def _lesions(n, size=32, seed=0):
  """``[n, size, size, 3]`` uint8 images, each a random smooth pattern."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, (n, 4, 4, 3))
  return np.repeat(np.repeat(coarse, size // 4, 1), size // 4, 2).astype(
      np.uint8)


def test_near_duplicate_groups_link_copies_transitively():
  images = _lesions(40)
  # 1 lies between 0 and 2, which are too far apart to link directly: a chain.
  noise = _lesions(1, seed=9)[0].astype(float) - 127.5
  images[2] = np.clip(images[0] + 0.35 * noise, 0, 255)
  images[1] = (images[0].astype(float) + images[2]) / 2
  images[3] = images[5] * 0.7 + 30  # Another exposure of 5.
  x = folds.screen_features(images)
  assert x[0] @ x[2] < 0.97 <= min(x[0] @ x[1], x[1] @ x[2], x[3] @ x[5])
  groups = folds.near_duplicate_groups(images, 0.97)
  assert groups[0] == groups[1] == groups[2] and groups[3] == groups[5]
  assert len(np.unique(groups)) == 40 - 3
  np.testing.assert_array_equal(groups, folds.near_duplicate_groups(images,
                                                                    0.97))
  # A flat image correlates with nothing, not even another flat one.
  flat = np.full((2, 32, 32, 3), 7, np.uint8)
  assert len(np.unique(folds.near_duplicate_groups(flat, 0.5))) == 2


def test_near_copies_name_the_reference_image():
  reference = _lesions(30)
  query = np.concatenate([reference[[4, 17]], _lesions(3, seed=5)])
  np.testing.assert_array_equal(
      folds.near_copies(query, reference, 0.97), [4, 17, -1, -1, -1])


def _grouped(n=103, seed=3):
  """Ids, labels and groups: 15 pairs and 3 triples, labels shared within."""
  split = _pooled(n)
  groups = np.arange(n)
  rng = np.random.default_rng(seed)
  rows = rng.permutation(n)
  for start, size in [(2 * i, 2) for i in range(15)] + [(30, 3), (33, 3),
                                                          (36, 3)]:
    members = rows[start:start + size]
    groups[members] = members[0]
    split.labels[members] = split.labels[members[0]]
  return split.ids, split.labels, groups


def test_folds_keep_groups_whole_and_stay_stratified():
  ids, labels, groups = _grouped()
  f = folds.assign_folds(ids, labels, 5, 0, groups)
  for g in np.unique(groups):
    assert len(set(f[groups == g])) == 1, g
  for cls in (0, 1):
    counts = np.bincount(f[labels == cls], minlength=5)
    assert counts.max() - counts.min() <= 3, (cls, counts)
  np.testing.assert_array_equal(f, folds.assign_folds(ids, labels, 5, 0,
                                                      groups))
  order = np.random.default_rng(2).permutation(len(ids))
  np.testing.assert_array_equal(
      folds.assign_folds(ids[order], labels[order], 5, 0, groups[order]),
      f[order])
  # Singleton groups deal exactly as the id-based folds without groups.
  np.testing.assert_array_equal(
      folds.assign_folds(ids, labels, 5, 0, np.arange(len(ids))),
      folds.assign_folds(ids, labels, 5, 0))
  val = folds.inner_validation(ids, labels, 0.2, 0, groups)
  for g in np.unique(groups):
    assert len(set(val[groups == g])) == 1, g
  for cls in (0, 1):
    assert abs(val[labels == cls].sum() - 0.2 * (labels == cls).sum()) <= 2


def test_crossval_splits_keep_copied_images_in_one_split():
  split = _pooled()
  images = _lesions(len(split))
  images[[10, 50, 90]] = images[70]  # One lesion four times...
  split.labels[[10, 50, 90]] = split.labels[70]
  split = dataclasses.replace(split, images=images)
  for k in range(5):
    s = folds.crossval_splits(split, _cv(k))
    where = {n for n in folds.CV_SPLITS
             for i in (10, 50, 70, 90) if split.ids[i] in s[n].ids}
    assert len(where) == 1, (k, where)  # ...always in one split.


def test_concat_rejects_shared_ids():
  split = _pooled(10, 3)
  with pytest.raises(ValueError, match="share image ids"):
    folds.concat([split, split])


def test_cv_split_names_need_num_folds(tiny_config):
  tiny_config.data.train_split = "cv_train"
  with pytest.raises(ValueError, match="num_folds=0"):
    run.validate_config(tiny_config)


def test_near_duplicate_threshold_must_be_a_correlation(tiny_config):
  tiny_config.data.train_split = "cv_train"
  tiny_config.data.crossval.num_folds = 5
  tiny_config.data.crossval.near_duplicate_threshold = 1.5
  with pytest.raises(ValueError, match="near_duplicate_threshold=1.5"):
    run.validate_config(tiny_config)


def test_init_from_must_name_an_earlier_stage(tiny_config):
  tiny_config.stages.joint.init_from = "joint"
  with pytest.raises(ValueError, match="stages.joint.init_from='joint'"):
    run.validate_config(tiny_config)


def _isic_configs():
  """configs/isic2017.py as a module (its variants and CROSSVAL_ARMS)."""
  import importlib.util
  from conftest import REPO
  spec = importlib.util.spec_from_file_location(
      "isic_cfg", REPO / "configs" / "isic2017.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_crossval_config_arms_share_state_and_batches():
  module = _isic_configs()
  config = module.get_config("crossval")
  order = config.stage_order
  arms = [i for i, n in enumerate(order) if config.stages[n].init_from]
  assert len(arms) == len(module.CROSSVAL_ARMS) + 1
  streams = {run.batch_stream(config, i) for i in arms}
  assert streams == {arms[0]}
  assert run.batch_stream(config, 0) == 0
  assert run.batch_stream(config, 1) == 1
  # Arms differ from the RAP arm only in what they ablate.
  rap = config.stages.joint.to_dict()
  for name, (_, changes) in module.CROSSVAL_ARMS.items():
    diff = {k for k, v in config.stages[name].to_dict().items() if rap[k] != v}
    assert diff <= set(changes) | {"report_as"}, (name, diff)
  run.validate_config(config)


@pytest.mark.slow  # a whole tiny run: about 80 s on 2 cores
def test_an_arm_starts_from_the_state_it_names(tiny_config, tmp_path):
  """A 0-step arm branching from Step 2, run after Step 4, scores as Step 2."""
  from rapool_jax import config_lib
  tiny_config.stages.copy_of_step2 = config_lib.stage(
      pooling="gap", lambda_class=1.0, lambda_seg=0.0,
      trainable=config_lib.TRAIN_BACKBONE_AND_CLASSIFIER,
      train_batch_norm=True, max_steps=0, lr=0.01, report_as="copy",
      init_from="classification")
  tiny_config.stage_order = ("classification", "segmentation", "joint",
                             "copy_of_step2")
  tiny_config.rankopt.enabled = False
  tiny_config.report.num_cam_images = 0
  workdir = str(tmp_path / "run")
  results = run.train_and_evaluate(tiny_config, workdir)
  by_name = {r["model"]: r for r in results["rows"]}
  assert by_name["copy"]["auc"] == by_name["Step 2: GAP"]["auc"]

  def scores(name):
    with open(os.path.join(workdir, "predictions", "test", name + ".csv")) as f:
      return [float(r["score"]) for r in csv.DictReader(f)]
  assert scores("copy") == scores("step_2_gap")
  assert scores("copy") != scores("step_4_region_pooling")


# ----------------------------------------------------------------------------
# The pooled report, on fold runs made of files.


def _fake_run(root, fold, ids, labels, arms, rng):
  run = os.path.join(root, crossval.run_name(fold, 0))
  config = {"seed": 0, "data": {"crossval": {"fold": fold},
                                "eval_split": "cv_test", "val_split": "cv_val"}}
  os.makedirs(run)
  with open(os.path.join(run, "config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(run, "results.json"), "w") as f:
    json.dump({"rows": [{"model": a} for a in arms]}, f)
  signal = labels + rng.normal(0, 1.0, len(labels))
  for split, n in (("cv_test", len(ids)), ("cv_val", 40)):
    val_labels = (np.arange(n) % 4 == 0).astype(int)
    for i, a in enumerate(arms):
      path = os.path.join(run, "predictions", split,
                          evaluate.row_slug(a) + ".csv")
      y = labels if split == "cv_test" else val_labels
      s = (signal * (1 + 0.3 * i) + rng.normal(0, 0.5, n)
           if split == "cv_test" else y + rng.normal(0, 1.0, n))
      ja = rng.uniform(0.3, 0.9, n)
      image_ids = ids if split == "cv_test" else [f"v{fold}_{j}" for j in range(n)]
      evaluate.write_predictions(path, pipeline.Split(
          images=np.zeros((n, 1, 1, 3), np.uint8),
          masks=np.zeros((n, 1, 1), np.uint8), labels=np.asarray(y),
          has_mask=np.ones(n, bool), ids=np.asarray(image_ids)), s, ja)
  return run


def test_report_pools_folds_and_recomputes_from_its_csvs(tmp_path):
  rng = np.random.default_rng(0)
  arms = ["Step 2: GAP", "RAP (lambda 7.5)", "GAP control", "RAP + RankOpt"]
  runs, all_ids = [], []
  for fold in range(3):
    ids = [f"ISIC_{fold}{j:03d}" for j in range(60)]
    labels = (np.arange(60) % 5 == 0).astype(int)
    runs.append(_fake_run(str(tmp_path), fold, ids, labels, arms, rng))
    all_ids += ids
  out = str(tmp_path / "report")
  results = crossval_report.write_report(runs, out)
  with open(os.path.join(out, "oof_scores.csv")) as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["image"] for r in rows) == sorted(all_ids)
  assert list(rows[0]) == ["image", "label", "fold", "seed", "step_2_gap",
                           "rap_lambda_7.5", "gap_control", "rap_rankopt"]
  seed0 = results["by_seed"][0]
  assert seed0["num_images"] == 180 and seed0["num_melanomas"] == 36
  names = [c["name"] for c in seed0["comparisons"]]
  assert "RAP vs GAP control (primary)" in names
  assert "RAP vs GAP + seg loss" not in names  # that arm is absent
  from rapool_jax import metrics
  y = np.array([int(r["label"]) for r in rows])
  rap = np.array([float(r["rap_lambda_7.5"]) for r in rows])
  arm = next(a for a in seed0["arms"] if a["arm"] == "rap_lambda_7.5")
  assert arm["auc"] == pytest.approx(metrics.roc_auc(y, rap))
  assert crossval_report.check(out) == []
  assert os.path.exists(os.path.join(out, "roc_seed0.png"))
  md = open(os.path.join(out, "results.md")).read()
  assert "RAP vs GAP control (primary)" in md
  # A table that no longer matches its CSVs is caught.
  with open(os.path.join(out, "results.json")) as f:
    saved = json.load(f)
  saved["by_seed"][0]["arms"][1]["auc"] += 0.01
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(saved, f)
  assert any("auc" in d for d in crossval_report.check(out))


def test_report_thresholds_come_from_the_validation_split(tmp_path):
  rng = np.random.default_rng(3)
  ids = [f"ISIC_{j:04d}" for j in range(80)]
  labels = (np.arange(80) % 4 == 0).astype(int)
  run = _fake_run(str(tmp_path), 0, ids, labels, ["RAP (lambda 7.5)"], rng)
  out = str(tmp_path / "report")
  crossval_report.write_report([run], out)
  oof, _, thresholds, _ = crossval_report.read_tables(out)
  with open(os.path.join(run, "predictions", "cv_val",
                         "rap_lambda_7.5.csv")) as f:
    val = list(csv.DictReader(f))
  from rapool_jax import metrics
  want = metrics.threshold_at_specificity(
      np.array([int(r["label"]) for r in val]),
      np.array([float(r["score"]) for r in val]), 0.884)
  assert thresholds[(0, 0, "rap_lambda_7.5")][0.884] == want
  positive = crossval_report.predicted_positive(oof, thresholds,
                                                "rap_lambda_7.5", 0.884)
  np.testing.assert_array_equal(positive, oof["rap_lambda_7.5"] >= want)


def test_a_step_schedule_that_never_anneals_is_named(tiny_config, capsys):
  run.validate_config(tiny_config)
  assert "never lowers" not in capsys.readouterr().out
  tiny_config.stages.joint.decay_every = tiny_config.stages.joint.max_steps
  run.validate_config(tiny_config)
  assert "stages.joint: schedule='step'" in capsys.readouterr().out
  tiny_config.stages.joint.schedule = "cosine"
  run.validate_config(tiny_config)
  assert "never lowers" not in capsys.readouterr().out


def test_runlocal_and_crossval_stages_anneal():
  from rapool_jax import optim
  module = _isic_configs()
  for variant in ("paper", "runlocal", "crossval"):
    config = module.get_config(variant)
    for name in config.stage_order:
      stage = config.stages[name]
      lr = optim.learning_rate_schedule(stage)
      assert float(lr(stage.max_steps - 1)) < 0.2 * stage.lr, (variant, name)
  runlocal = module.get_config("runlocal")
  # Step 4 fine-tunes Step 2: it starts well below Step 2's peak.
  assert runlocal.stages.joint.lr <= 0.2 * runlocal.stages.classification.lr


def test_fullsize_crossval_is_the_papers_network_on_the_same_folds():
  module = _isic_configs()
  small, full = module.get_config("crossval"), module.get_config("crossval,fullsize")
  assert (full.model.depth, full.data.crop_size, full.model.output_stride) == (
      "50", 224, 32)
  assert full.data.crossval == small.data.crossval
  assert full.stage_order == small.stage_order
  run.validate_config(full)
  with pytest.raises(ValueError, match="use crossval,fullsize"):
    module.get_config("fullsize")


def test_committed_crossval_table_recomputes_from_its_csvs():
  from conftest import REPO
  out = REPO / "results" / "crossval_isic2017"
  assert crossval_report.check(str(out)) == []
  md = (out / "results.md").read_text()
  results = crossval_report.compute_all(str(out))
  primary = next(c for c in results["by_seed"][0]["comparisons"]
                 if c["name"].startswith("RAP vs GAP control"))
  assert f"{primary['diff']:+.3f}" in md
  assert results["by_seed"][0]["num_images"] == 2150
