"""Cross-validation: folds, Step-4 arms branching from one state, the pooled report."""

import csv
import dataclasses
import functools
import json
import os
import shutil

import ml_collections
import numpy as np
import pytest

from launch import crossval
from launch import crossval_report
from launch import testsplit_report
from rapool_jax import checks
from rapool_jax import errors
from rapool_jax import evaluate
from rapool_jax import metrics
from rapool_jax import population
from rapool_jax import run
from rapool_jax import run_population
from rapool_jax import stats
from rapool_jax import train
from rapool_jax.analysis import crossval as cv_analysis
from rapool_jax.analysis import near_copies
from rapool_jax.analysis import paired
from rapool_jax.analysis import power
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
    ids = [set(s[n].ids) for n in pipeline.CV_SPLITS]
    assert sum(map(len, ids)) == 103 and len(set.union(*ids)) == 103
    assert s["cv_val"].labels.sum() >= 1 and (s["cv_val"].labels == 0).sum() >= 1
    assert abs(len(s["cv_val"]) - 0.1 * (103 - len(s["cv_test"]))) <= 2
    # Rows travel with their ids.
    np.testing.assert_array_equal(
        s["cv_test"].images[:, 0, 0, 0],
        [int(i[5:]) for i in s["cv_test"].ids])
    tested += list(s["cv_test"].ids)
  assert sorted(tested) == sorted(split.ids)  # each image scored exactly once
  with pytest.raises(errors.UserError, match="crossval.fold=5"):
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
    where = {n for n in pipeline.CV_SPLITS
             for i in (10, 50, 70, 90) if split.ids[i] in s[n].ids}
    assert len(where) == 1, (k, where)  # ...always in one split.


def test_concat_rejects_shared_ids():
  split = _pooled(10, 3)
  with pytest.raises(errors.UserError, match="share image ids"):
    folds.concat([split, split])


def test_cv_split_names_need_num_folds(tiny_config):
  tiny_config.data.train_split = "cv_train"
  with pytest.raises(errors.UserError, match="num_folds=0"):
    run.validate_config(tiny_config)


def test_near_duplicate_threshold_must_be_a_correlation(tiny_config):
  tiny_config.data.train_split = "cv_train"
  tiny_config.data.crossval.num_folds = 5
  tiny_config.data.crossval.near_duplicate_threshold = 1.5
  with pytest.raises(errors.UserError, match="near_duplicate_threshold=1.5"):
    run.validate_config(tiny_config)


def test_init_from_must_name_an_earlier_stage(tiny_config):
  tiny_config.stages.joint.init_from = "joint"
  with pytest.raises(errors.UserError, match="stages.joint.init_from='joint'"):
    run.validate_config(tiny_config)


def _isic_configs():
  """configs/isic2017.py as a module (its variants and CROSSVAL_ARMS)."""
  from conftest import load_module
  return load_module("configs/isic2017.py")


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
# The reports, on runs made of hand-written prediction CSVs (no training).

ARMS = ["Step 2: GAP", "RAP (lambda 7.5)", "GAP control", "RAP + RankOpt",
        "RAP + logistic regression"]
SLUGS = ["step_2_gap", "rap_lambda_7.5", "gap_control", "rap_rankopt",
         "rap_logistic_regression"]


def _labels(n, every=5):
  return (np.arange(n) % every == 0).astype(int)


def _write_predictions(path, ids, labels, scores, jaccards=None):
  """A ``predictions/<split>/<arm>.csv`` as ``evaluate.write_predictions``."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image", "label", "score"]
               + (["jaccard"] if jaccards is not None else []))
    for i, image in enumerate(ids):
      w.writerow([image, int(labels[i]), repr(float(scores[i]))]
                 + ([f"{jaccards[i]:.6f}"] if jaccards is not None else []))


# The stage (or head) of each report label above.
STAGE_OF = {"Step 2: GAP": "classification", "RAP (lambda 7.5)": "joint",
            "GAP control": "gap_control",
            "GAP + seg loss (lambda 7.5)": "joint_gap_seg"}
HEADS = {"RAP + RankOpt": "enabled",
         "RAP + logistic regression": "logistic_regression"}


@functools.lru_cache
def _isic_config(variant):
  from conftest import load_module
  config = load_module("configs/isic2017.py").get_config(variant)
  return config.to_json_best_effort()


def _run_config(variant, arms, seed, data):
  """configs/isic2017.py:VARIANT as a run's config.json, training ``arms``
  (report labels), with ``seed`` and ``data`` fields set."""
  config = json.loads(_isic_config(variant))
  config["stage_order"] = [STAGE_OF[a] for a in arms if a in STAGE_OF]
  for label, key in HEADS.items():
    config["rankopt"][key] = label in arms
  config["seed"] = seed
  for key, value in data.items():
    config["data"][key] = ({**config["data"].get(key, {}), **value}
                           if isinstance(value, dict) else value)
  return config


def _fake_run(run, config, splits, rng, arms=ARMS):
  """A finished run: config.json, results.json rows, per-image predictions
  of every arm on ``splits`` (name -> (ids, labels, with Jaccard))."""
  os.makedirs(run)
  with open(os.path.join(run, "config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(run, "results.json"), "w") as f:
    json.dump({"rows": [{"model": a} for a in arms]}, f)
  for split, (ids, labels, jaccard) in splits.items():
    signal = labels + rng.normal(0, 1.0, len(ids))
    for i, a in enumerate(arms):
      _write_predictions(
          os.path.join(run, "predictions", split,
                       evaluate.row_slug(a) + ".csv"), ids, labels,
          signal * (1 + 0.3 * i) + rng.normal(0, 0.7, len(ids)),
          rng.uniform(0.3, 0.9, len(ids)) if jaccard else None)
  return run


TEST_IDS = [f"ISIC_9{j:03d}" for j in range(50)]


def _cv_run(root, fold, seed, rng, arms=ARMS, name=""):
  ids = [f"ISIC_{fold}{j:03d}" for j in range(60)]
  config = _run_config("crossval", arms, seed, {
      "crossval": {"fold": fold}, "eval_split": "cv_test",
      "val_split": "cv_val"})
  return _fake_run(
      os.path.join(root, name or crossval.run_name(fold, seed)), config,
      {"cv_test": (ids, _labels(60), True),
       "cv_val": ([f"v{fold}_{j}" for j in range(40)], _labels(40, 4), True),
       "test": (TEST_IDS, _labels(50), False)}, rng, arms)


@pytest.fixture(scope="module")
def cv_report(tmp_path_factory):
  """3 folds x 2 seeds, scored out of fold and on a 50-image test split,
  with 5 test images listed as near-copies."""
  root = tmp_path_factory.mktemp("cv")
  rng = np.random.default_rng(0)
  runs = [_cv_run(str(root), f, s, rng) for s in (0, 1) for f in range(3)]
  near = root / "near.txt"
  near.write_text("\n".join(TEST_IDS[:5]) + "\n")
  out = str(root / "report")
  results = crossval_report.write_report(runs, out, exclude_images=str(near))
  return out, results


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_report_has_one_row_per_image_and_seed_and_recomputes(cv_report):
  out, results = cv_report
  rows = _rows(os.path.join(out, "oof_scores.csv"))
  assert list(rows[0]) == ["image", "label", "fold", "seed"] + SLUGS
  assert len(rows) == 2 * 180
  assert sorted({(r["image"], r["seed"]) for r in rows}) == sorted(
      (f"ISIC_{f}{j:03d}", str(s)) for f in range(3) for j in range(60)
      for s in (0, 1))
  test = _rows(os.path.join(out, "test_scores.csv"))
  assert list(test[0])[:4] == ["image", "label", "seed", "fold"]
  assert len(test) == 50 * 6  # each fold x seed model scores every image
  assert crossval_report.check(out) == []
  assert crossval_report.main(["--check", out]) == 0
  md = open(os.path.join(out, "results.md")).read()
  assert "**Partial" not in md
  assert "**Fold-stratified is primary**" in md
  assert os.path.exists(os.path.join(out, "roc_seed1.png"))


def test_report_averages_seeds_per_image_and_stratifies_by_fold(cv_report):
  out, results = cv_report
  rows = _rows(os.path.join(out, "oof_scores.csv"))
  by_image = {}
  for r in rows:
    by_image.setdefault(r["image"], []).append(r)
  images = sorted(by_image)
  y = np.array([int(by_image[i][0]["label"]) for i in images])
  folds = np.array([int(by_image[i][0]["fold"]) for i in images])
  mean = lambda a: np.array([np.mean([float(r[a]) for r in by_image[i]])
                             for i in images])  # noqa: E731
  avg = results["seed_averaged"]
  rap = next(a for a in avg["arms"] if a["arm"] == "rap_lambda_7.5")
  assert rap["auc"] == pytest.approx(metrics.roc_auc(y, mean("rap_lambda_7.5")))
  per_seed = [metrics.roc_auc(
      np.array([int(r["label"]) for r in rows if r["seed"] == s]),
      np.array([float(r["rap_lambda_7.5"]) for r in rows if r["seed"] == s]))
              for s in ("0", "1")]
  assert rap["auc_per_seed"] == pytest.approx(per_seed)
  assert rap["auc_seed_mean_sd"]["sd"] == pytest.approx(np.std(per_seed,
                                                                ddof=1))
  primary = avg["comparisons"][0]
  assert primary["name"] == "RAP vs GAP control (primary)"
  want = stats.stratified_delong(y, mean("rap_lambda_7.5"),
                                 mean("gap_control"), folds)
  assert primary["stratified"]["diff"] == pytest.approx(want["diff"])
  assert primary["stratified"]["lo"] == pytest.approx(want["lo"])
  assert primary["pooled"]["diff"] == pytest.approx(
      stats.paired_delong(y, mean("rap_lambda_7.5"),
                          mean("gap_control"))["diff"])


def test_power_splits_the_primary_se_into_image_and_seed_noise(cv_report):
  """SE by seeds averaged: k = 1 is the mean of the single seeds' stratified
  SEs, k = 2 the seed-averaged verdict's; the two-point fit is exact."""
  out, results = cv_report
  oof = cv_analysis.read_tables(out)["oof"]
  single = []
  for s in (0, 1):
    keep = oof["seed"] == s
    single.append(stats.stratified_delong(
        oof["label"][keep], oof["rap_lambda_7.5"][keep],
        oof["gap_control"][keep], oof["fold"][keep])["se"])
  p = results["power"]["out_of_fold"]
  assert (p["a"], p["b"], p["stratified"]) == ("rap_lambda_7.5",
                                                "gap_control", True)
  se1, se2 = (r["se"] for r in p["by_seeds"])
  assert se1 == pytest.approx(np.mean(single))
  assert se2 == pytest.approx(
      results["seed_averaged"]["comparisons"][0]["stratified"]["se"])
  fit = p["fit"]
  assert se1 > se2 > 0 and 2 * se2**2 > se1**2  # the exact fit is >= 0
  assert fit["floor_se"] ** 2 == pytest.approx(2 * se2**2 - se1**2)
  assert fit["model_se_one_seed"] ** 2 == pytest.approx(2 * (se1**2 - se2**2))
  target = (power.HALF_WIDTH_TARGET / 1.959964) ** 2
  want = (None if target <= fit["floor_se"] ** 2 else int(np.ceil(
      fit["model_se_one_seed"] ** 2 / (target - fit["floor_se"] ** 2))))
  assert fit["seeds_for_target"] == want
  assert "test" in results["power"]
  assert "## Power: SE of rap_lambda_7.5 - gap_control" in open(
      os.path.join(out, "results.md")).read()


def test_averaging_seeds_removes_the_model_noise_only():
  """Scores = image effect + per-seed noise: the fit's floor is below the
  one-seed SE, and its model part is what averaging removes."""
  rng = np.random.default_rng(1)
  n, seeds = 400, (0, 1, 2, 3)
  y = (np.arange(n) % 4 == 0).astype(int)
  base = y + rng.normal(0, 1, n)
  cols = {k: [] for k in ("image", "label", "fold", "seed", "a", "b")}
  for s in seeds:
    cols["image"].append(np.arange(n))
    cols["label"].append(y)
    cols["fold"].append(np.arange(n) // (n // 2))
    cols["seed"].append(np.full(n, s))
    cols["a"].append(base + rng.normal(0, 2, n))
    cols["b"].append(base + rng.normal(0, 2, n))
  cols = {k: np.concatenate(v) for k, v in cols.items()}
  r = power.se_by_seed_count(cols, "a", "b", strata="fold")
  ses = [x["se"] for x in r["by_seeds"]]
  assert [x["subsets"] for x in r["by_seeds"]] == [4, 6, 4, 1]
  assert ses == sorted(ses, reverse=True)
  assert r["fit"]["floor_se"] < ses[-1] < ses[0]
  assert r["fit"]["model_se_one_seed"] > r["fit"]["floor_se"]


def test_report_scores_the_test_split_with_and_without_near_copies(cv_report):
  out, results = cv_report
  rows = _rows(os.path.join(out, "test_scores.csv"))
  score = {i: np.mean([float(r["rap_lambda_7.5"]) for r in rows
                       if r["image"] == i]) for i in TEST_IDS}
  control = {i: np.mean([float(r["gap_control"]) for r in rows
                         if r["image"] == i]) for i in TEST_IDS}
  y = _labels(50)
  test = results["test"]
  assert test["near_copies"] == 5 and test["near_copy_melanomas"] == 1
  assert test["models_per_image"] == [6]
  primary = test["comparisons"][0]
  a = np.array([score[i] for i in TEST_IDS])
  b = np.array([control[i] for i in TEST_IDS])
  assert primary["all"]["diff"] == pytest.approx(
      stats.paired_delong(y, a, b)["diff"])
  assert primary["without_near_copies"]["diff"] == pytest.approx(
      stats.paired_delong(y[5:], a[5:], b[5:])["diff"])
  assert "ΔAUC without near-copies" in open(
      os.path.join(out, "results.md")).read()


def test_sensitivities_are_compared_only_at_matched_specificity(cv_report):
  _, results = cv_report
  y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
  s = np.array([0.9, 0.8, 0.2, 0.7, 0.6, 0.5, 0.4, 0.1])
  far = paired.matched_sensitivity(y, s, s, 0.65, 0.45)
  assert far["p"] is None and "Spe differs by 0.400 > 0.01" in far["why"]
  same = paired.matched_sensitivity(y, s, s, 0.65, 0.65)
  assert same["p"] == 1.0 and same["why"] is None
  entries = [e for r in results["by_seed"] for e in r["sensitivity"]]
  entries += results["seed_averaged"]["sensitivity"]
  for e in entries:
    gap = abs(e["spe_a"] - e["spe_b"])
    assert (e["p"] is None) == (gap > paired.MATCH_TOLERANCE + 1e-12)
  # Per-fold ROC points: every arm reaches the target on each fold.
  assert all(min(e["spe_a"], e["spe_b"]) >= e["specificity"]
             for e in results["seed_averaged"]["sensitivity"])


def _replace_line(path, index, new=None):
  with open(path) as f:
    lines = f.read().split("\n")
  if new is None:
    del lines[index]
  else:
    lines[index] = new(lines[index])
  with open(path, "w") as f:
    f.write("\n".join(lines))


def _edit_json(out, fn):
  path = os.path.join(out, "results.json")
  with open(path) as f:
    saved = json.load(f)
  fn(saved)
  with open(path, "w") as f:
    json.dump(saved, f)


def _drop_column(path, column):
  rows = _rows(path)
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, [c for c in rows[0] if c != column])
    w.writeheader()
    w.writerows({k: v for k, v in r.items() if k != column} for r in rows)


def _drop_arm_everywhere(out):
  for name in ("oof_scores.csv", "oof_jaccard.csv", "test_scores.csv"):
    _drop_column(os.path.join(out, name), "rap_logistic_regression")
  path = os.path.join(out, "thresholds.csv")
  rows = [r for r in _rows(path) if r["arm"] != "rap_logistic_regression"]
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, list(rows[0]))
    w.writeheader()
    w.writerows(rows)


def _append(path, text):
  with open(path, "a") as f:
    f.write(text)


def _md_figure(out):
  """Changes the seed-averaged RAP AUC where results.md prints it."""
  path = os.path.join(out, "results.md")
  with open(path) as f:
    md = f.read()
  i = md.index("| rap_lambda_7.5 |")
  row = md[i:md.index("\n", i)]
  cells = row.split(" | ")
  cells[3] = "0.999 " + cells[3].split(" ", 1)[1]
  with open(path, "w") as f:
    f.write(md.replace(row, " | ".join(cells), 1))


TAMPERING = {
    "deleted oof row": (lambda o: _replace_line(
        os.path.join(o, "oof_scores.csv"), 5), "not in every seed"),
    "deleted test row": (lambda o: _replace_line(
        os.path.join(o, "test_scores.csv"), 7), "did not score"),
    "image scored twice in a seed": (lambda o: _append(
        os.path.join(o, "oof_scores.csv"),
        open(os.path.join(o, "oof_scores.csv")).read().split("\n")[3] + "\n"),
        "appears 2 times"),
    "altered figure in results.md": (_md_figure, "results.md line"),
    "fabricated row appended to results.md": (lambda o: _append(
        os.path.join(o, "results.md"),
        "| RAP vs GAP control (primary) | +0.100 | [+0.050, +0.150] | "
        "1.0e-04 | [+0.050, +0.150] |\n"), "extra line"),
    "altered figure in results.json": (lambda o: _edit_json(
        o, lambda r: r["seed_averaged"]["arms"][1].update(
            auc=r["seed_averaged"]["arms"][1]["auc"] + 0.01)),
        "seed_averaged.arms[rap_lambda_7.5].auc"),
    "deleted comparison in results.json": (lambda o: _edit_json(
        o, lambda r: r["test"]["comparisons"].pop()), "entries saved"),
    "extra arm in results.json": (lambda o: _edit_json(
        o, lambda r: r["arms"].append("rap_lambda_1")), "results.json.arms"),
    "arm missing from one CSV": (lambda o: _drop_column(
        os.path.join(o, "oof_jaccard.csv"), "gap_control"), "arms"),
    "arm missing from every CSV": (
        _drop_arm_everywhere,
        "no column rap_logistic_regression (arm logistic_regression)"),
    "finished run dropped from runs.csv": (lambda o: _replace_line(
        os.path.join(o, "runs.csv"), 1),
        "runs.csv does not list it as finished"),
    "near-copy that is no test image": (lambda o: _append(
        os.path.join(o, "test_near_copies.csv"), "ISIC_0000000\n"),
        "not a test image"),
    "results.md deleted": (lambda o: os.remove(os.path.join(o, "results.md")),
                           "missing"),
}


@pytest.mark.parametrize("tamper", sorted(TAMPERING))
def test_check_fails_naming_what_differs(cv_report, tmp_path, tamper):
  out = str(tmp_path / "report")
  shutil.copytree(cv_report[0], out)
  edit, named = TAMPERING[tamper]
  edit(out)
  diffs = crossval_report.check(out)
  assert diffs and any(named in d for d in diffs), diffs
  assert crossval_report.main(["--check", out]) == 1


def test_an_arm_without_test_scores_is_left_out_of_the_test_split(tmp_path):
  """The mask oracle writes no test predictions (no test masks): the test
  half goes without it; runs disagreeing on it are refused."""
  rng = np.random.default_rng(2)
  runs = [_cv_run(str(tmp_path), f, 0, rng) for f in range(3)]
  for run in runs:
    os.remove(os.path.join(run, "predictions", "test", "rap_rankopt.csv"))
  out = str(tmp_path / "report")
  results = crossval_report.write_report(runs, out)
  test = _rows(os.path.join(out, "test_scores.csv"))
  assert list(test[0]) == ["image", "label", "seed", "fold"] + [
      a for a in SLUGS if a != "rap_rankopt"]
  assert [a["arm"] for a in results["test"]["arms"]] == [
      a for a in SLUGS if a != "rap_rankopt"]
  assert "rap_rankopt" in [a["arm"] for a in results["seed_averaged"]["arms"]]
  assert crossval_report.check(out) == []
  _drop_column(os.path.join(out, "test_scores.csv"), "gap_control")
  assert any("gap_control" in d for d in crossval_report.check(out))
  _write_predictions(os.path.join(runs[1], "predictions", "test",
                                  "rap_rankopt.csv"), TEST_IDS, _labels(50),
                     np.zeros(50))
  with pytest.raises(ValueError, match="differ from the other runs'"):
    cv_analysis.collect(runs)


def test_runs_whose_config_predates_declared_comparisons_are_named(tmp_path):
  """A config.json without report.comparisons never gives a report without
  comparisons: it stops, naming the remedy, --comparisons CONFIG."""
  rng = np.random.default_rng(8)
  runs = [_cv_run(str(tmp_path), f, 0, rng, ARMS[:3]) for f in range(3)]
  for run in runs:
    path = os.path.join(run, "config.json")
    with open(path) as f:
      config = json.load(f)
    del config["report"]["comparisons"]
    with open(path, "w") as f:
      json.dump(config, f)
  out = str(tmp_path / "report")
  with pytest.raises(ValueError, match="no report.comparisons"):
    crossval_report.write_report(runs, out)
  results = crossval_report.write_report(
      runs, out, comparisons_from="configs/isic2017.py:crossval")
  assert [c["name"] for c in results["seed_averaged"]["comparisons"]] == [
      "RAP vs GAP control (primary)", "RAP vs Step 2",
      "GAP control vs Step 2"]
  assert crossval_report.check(out) == []


def test_partial_report_says_which_runs_are_missing(tmp_path):
  rng = np.random.default_rng(1)
  runs = [_cv_run(str(tmp_path), f, s, rng, ARMS[:3])
          for s in (0, 1) for f in range(3) if (f, s) != (2, 1)]
  out = str(tmp_path / "report")
  expected = [(f, s) for f in range(3) for s in (0, 1)]
  results = crossval_report.write_report(runs, out, expected=expected)
  md = open(os.path.join(out, "results.md")).read()
  assert md.startswith("**Partial: 5 of 6 fold runs finished; missing: "
                       "fold 2 seed 1.")
  assert results["runs"]["missing"] == [[2, 1]]
  assert results["seed_averaged"]["scores_per_image"] == [1, 2]
  assert crossval_report.check(out) == []
  # An image deleted from the only seed that scored it (fold 2 of seed 0)
  # leaves consistent CSVs, and changes the counts.
  for name in ("oof_scores.csv", "oof_jaccard.csv"):
    _replace_line(os.path.join(out, name), -2)
  assert any("by_seed[0].num_images: saved 180, recomputed 179" in d
             for d in crossval_report.check(out))
  # Finished runs give a report without the banner.
  crossval_report.write_report(runs, out)
  assert "Partial" not in open(os.path.join(out, "results.md")).read()


def test_report_thresholds_come_from_the_validation_split(tmp_path):
  rng = np.random.default_rng(3)
  run = _cv_run(str(tmp_path), 0, 0, rng, ["RAP (lambda 7.5)"])
  out = str(tmp_path / "report")
  crossval_report.write_report([run], out)
  t = cv_analysis.read_tables(out)
  val = _rows(os.path.join(run, "predictions", "cv_val", "rap_lambda_7.5.csv"))
  want = metrics.threshold_at_specificity(
      np.array([int(r["label"]) for r in val]),
      np.array([float(r["score"]) for r in val]), 0.884)
  positive = cv_analysis.predicted_positive(
      t["oof"], t["thresholds"], "rap_lambda_7.5", 0.884)
  np.testing.assert_array_equal(positive, t["oof"]["rap_lambda_7.5"] >= want)


def test_crossval_launch_runs_folds_times_seeds_and_reports(tmp_path):
  rng = np.random.default_rng(4)
  root = str(tmp_path / "cv")
  jobs = crossval.make_jobs("configs/isic2017.py:crossval", root, [0, 1, 2],
                            [0, 1], [], 3)
  assert [j.meta for j in jobs[1:]] == [{"fold": f, "seed": s}
                                        for s in (0, 1) for f in range(3)]
  assert all(f"--config.seed={j.meta['seed']}" in j.overrides for j in jobs[1:])
  for f in range(3):
    _cv_run(root, f, 0, rng, ARMS[:3])
  out = str(tmp_path / "report")
  rc = crossval.main(["--workdir", root, "--folds", "0,1,2", "--num-seeds",
                      "2", "--out", out, "--report-only"])
  assert rc == 1  # seed 1 has not run
  md = open(os.path.join(out, "results.md")).read()
  assert md.startswith("**Partial: 3 of 6 fold runs finished; missing: fold "
                       "0 seed 1, fold 1 seed 1, fold 2 seed 1.")
  assert crossval_report.check(out) == []


def _report(workdir, out, *flags):
  return crossval.main(["--workdir", workdir, "--folds", "0,1,2",
                        "--num-seeds", "2", "--out", out, *flags])


def test_crossval_population_is_reported_as_its_fold_runs(tmp_path, capsys):
  root, seq = str(tmp_path / "cv"), str(tmp_path / "seq")
  jobs = crossval.make_jobs("configs/isic2017.py:crossval", root, [0, 1, 2],
                            [0, 1], [], 3, as_population=True)
  assert [j.name for j in jobs] == ["prepare_data", "population"]
  pop = jobs[1]
  assert pop.overrides[-2:] == ["--seeds=0,1", "--folds=0,1,2"]
  assert pop.done_file == os.path.join("member5", "results.json")
  assert _report(root, str(tmp_path / "r"), "--population", "--dry-run") == 0
  assert "--seeds=0,1 --folds=0,1,2" in capsys.readouterr().out
  assert _report(root, str(tmp_path / "r"), "--population",
                 "--report-only") == 1  # no members.json yet
  # The same predictions as sequential runs and as a population's members
  # (seed-major, named by members.json) give the same tables.
  members = run_population.make_members([0, 1], [0, 1, 2])
  os.makedirs(pop.workdir)
  with open(os.path.join(pop.workdir, population.MANIFEST), "w") as f:
    json.dump({"members": [m.as_dict() for m in members]}, f)
  for p, m in enumerate(members):
    for where, name in ((seq, ""), (pop.workdir, f"member{p}")):
      _cv_run(where, m.fold, m.seed, np.random.default_rng(p), ARMS[:3], name)
  out = {w: str(tmp_path / f"report_{w}") for w in ("seq", "pop")}
  assert _report(seq, out["seq"], "--report-only") == 0
  assert _report(root, out["pop"], "--population", "--report-only") == 0
  for name in ("oof_scores.csv", "oof_jaccard.csv", "test_scores.csv",
               "thresholds.csv", "runs.csv", "results.md", "results.json"):
    with open(os.path.join(out["seq"], name)) as a, open(
        os.path.join(out["pop"], name)) as b:
      assert a.read() == b.read(), name
  # Killed while writing member 4 out, before member 5: both are missing.
  os.remove(os.path.join(pop.workdir, "member4", "results.json"))
  shutil.rmtree(os.path.join(pop.workdir, "member5"))
  assert _report(root, out["pop"], "--population", "--report-only") == 1
  md = open(os.path.join(out["pop"], "results.md")).read()
  assert md.startswith("**Partial: 4 of 6 fold runs finished; missing: fold "
                       "1 seed 1, fold 2 seed 1.")
  assert crossval_report.check(out["pop"]) == []


# ----------------------------------------------------------------------------
# The test-split seeds (configs/isic2017.py:testsplit).


def _seed_run(root, seed, rng):
  arms = ARMS + ["GAP + seg loss (lambda 7.5)"]
  config = _run_config("testsplit", arms, seed, {"eval_split": "test",
                                                 "val_split": "validation"})
  return _fake_run(os.path.join(root, f"seed{seed}"), config,
                   {"test": (TEST_IDS, _labels(50), False),
                    "validation": ([f"V{j}" for j in range(40)],
                                   _labels(40, 4), True)}, rng, arms)


@pytest.fixture(scope="module")
def testsplit_out(tmp_path_factory):
  root = tmp_path_factory.mktemp("testsplit")
  rng = np.random.default_rng(5)
  runs = [_seed_run(str(root), s, rng) for s in (0, 1, 2)]
  near = root / "near.csv"
  near.write_text("image,reference\n" + "".join(
      f"{i},ISIC_0000001\n" for i in TEST_IDS[45:]))
  out = str(root / "report")
  results = testsplit_report.write_report(runs, out, [0, 1, 2, 3], str(near))
  return out, results


def test_testsplit_report_pairs_seed_averaged_scores(testsplit_out):
  out, r = testsplit_out
  rows = _rows(os.path.join(out, "test_scores.csv"))
  assert list(rows[0])[:3] == ["image", "label", "seed"]
  assert len(rows) == 150
  mean = lambda a, keep=slice(None): np.array(  # noqa: E731
      [np.mean([float(x[a]) for x in rows if x["image"] == i])
       for i in TEST_IDS])[keep]
  y = _labels(50)
  names = [c["name"] for c in r["comparisons"]]
  assert names[:4] == ["RAP vs GAP control (primary)", "RAP vs GAP + seg loss",
                       "RankOpt vs RAP softmax", "GAP control vs Step 2"]
  primary = r["comparisons"][0]
  want = stats.paired_delong(y, mean("rap_lambda_7.5"), mean("gap_control"))
  assert primary["all"]["diff"] == pytest.approx(want["diff"])
  assert primary["all"]["p"] == pytest.approx(want["p"])
  keep = slice(0, 45)
  assert primary["without_near_copies"]["diff"] == pytest.approx(
      stats.paired_delong(y[keep], mean("rap_lambda_7.5", keep),
                          mean("gap_control", keep))["diff"])
  rap = next(a for a in r["arm_rows"] if a["arm"] == "rap_lambda_7.5")
  assert len(rap["auc_per_seed"]) == 3
  # Thresholds from the seed-averaged validation scores, never the test's.
  val = _rows(os.path.join(out, "val_scores.csv"))
  v = np.array([np.mean([float(x["rap_lambda_7.5"]) for x in val
                         if x["image"] == f"V{j}"]) for j in range(40)])
  assert rap["at_spe0.884"]["threshold"] == metrics.threshold_at_specificity(
      _labels(40, 4), v, 0.884)
  for e in r["sensitivity_at_validation_thresholds"]:
    assert (e["p"] is None) == (abs(e["spe_a"] - e["spe_b"]) > 0.01 + 1e-12)
  md = open(os.path.join(out, "results.md")).read()
  assert md.startswith("**Partial: 3 of 4 seeds finished; missing: seeds [3].")
  assert testsplit_report.main(["--check", out]) == 0


@pytest.mark.parametrize("tamper", ["deleted row", "duplicated image",
                                    "altered figure", "fabricated row",
                                    "missing arm"])
def test_testsplit_check_fails_naming_what_differs(testsplit_out, tmp_path,
                                                   tamper):
  import shutil
  out = str(tmp_path / "report")
  shutil.copytree(testsplit_out[0], out)
  test_csv = os.path.join(out, "test_scores.csv")
  if tamper == "deleted row":
    _replace_line(test_csv, 4)
  elif tamper == "duplicated image":
    _append(os.path.join(out, "val_scores.csv"), open(os.path.join(
        out, "val_scores.csv")).read().split("\n")[2] + "\n")
  elif tamper == "altered figure":
    _edit_json(out, lambda r: r["comparisons"][0]["all"].update(diff=0.2))
  elif tamper == "fabricated row":
    _append(os.path.join(out, "results.md"), "| made up | 0.9 |\n")
  else:
    _drop_arm = lambda p: _drop_column(p, "gap_control")  # noqa: E731
    _drop_arm(test_csv)
    _drop_arm(os.path.join(out, "val_scores.csv"))
  diffs = testsplit_report.check(out)
  assert diffs, tamper
  assert testsplit_report.main(["--check", out]) == 1


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


@pytest.mark.parametrize("name", ["crossval_isic2017",
                                  "crossval_isic2017_idfolds_seed0"])
def test_committed_crossval_table_recomputes_from_its_csvs(name):
  from conftest import REPO
  out = REPO / "results" / name
  assert crossval_report.check(str(out)) == []
  md = (out / "results.md").read_text()
  results = json.loads((out / "results.json").read_text())
  primary = results["seed_averaged"]["comparisons"][0]
  assert primary["name"] == "RAP vs GAP control (primary)"
  assert f"| {primary['stratified']['diff']:+.3f} |" in md
  assert results["by_seed"][0]["num_images"] == 2150


def test_near_copy_rows_name_test_images_copied_in_training():
  ref = _pooled(12, 3, size=24)
  rng = np.random.default_rng(6)
  ref.images[:] = rng.integers(0, 256, ref.images.shape, np.uint8)
  test = _pooled(4, 1, size=24)
  test.images[:] = rng.integers(0, 256, test.images.shape, np.uint8)
  test.images[2] = ref.images[7]
  test.ids[:] = ["T0", "T1", "T2", "T3"]
  rows = near_copies.near_copy_rows(test, ref, 0.97)
  assert rows == [{"image": "T2", "reference": str(ref.ids[7])}]
