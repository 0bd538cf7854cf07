"""rapool_jax/analysis on small synthetic frames: tidy frames, seed averages,
strata, paired comparisons, bootstrap replicates and interactions, the arms
and comparisons declared by name."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from rapool_jax import metrics
from rapool_jax import stats
from rapool_jax.analysis import crossval
from rapool_jax.analysis import design
from rapool_jax.analysis import frames
from rapool_jax.analysis import paired
from rapool_jax.analysis import runs
from rapool_jax.analysis import tables


def _long(n=60, seeds=(0, 1, 2), folds=4, seed=0):
  """A tidy frame: n images in ``folds`` folds, every seed scoring every
  image with arms a (informative) and b (less so)."""
  rng = np.random.default_rng(seed)
  y = (np.arange(n) % 3 == 0).astype(int)
  rows = []
  for s in seeds:
    for arm, signal in (("a", 1.5), ("b", 0.7)):
      score = signal * y + rng.normal(0, 1, n)
      rows += [dict(image=f"I{i:03d}", label=y[i], fold=i % folds, seed=s,
                    arm=arm, score=score[i]) for i in range(n)]
  return pd.DataFrame(rows)


def test_tidy_and_widen_are_inverse_and_keep_row_order():
  wide = pd.DataFrame({"image": ["x", "y", "z"], "label": [1, 0, 0],
                       "a": [0.1, 0.2, 0.3], "b": [0.3, 0.2, 0.1]})
  long = frames.tidy(wide, ["image", "label"])
  assert list(long.columns) == ["image", "label", "arm", "score"]
  assert long["arm"].tolist() == ["a"] * 3 + ["b"] * 3
  pd.testing.assert_frame_equal(frames.widen(long, ["image", "label"]), wide)
  with pytest.raises(ValueError, match="arm 'b' scores other rows"):
    frames.widen(long.drop(index=4), ["image", "label"])


def test_seed_average_is_the_mean_per_image_and_arm():
  long = _long()
  avg = frames.average_scores(long, keep=("label", "fold"))
  assert len(avg) == 60 * 2 and set(avg["n"]) == {3}
  want = long.groupby(["arm", "image"])["score"].mean()
  got = avg.set_index(["arm", "image"])["score"]
  np.testing.assert_allclose(got.loc[want.index], want, rtol=1e-14)
  # Row order of the sum is the frame's: bincount, not pairwise summation.
  g = long[(long["arm"] == "a") & (long["image"] == "I000")]["score"]
  assert got.loc[("a", "I000")] == (g.iloc[0] + g.iloc[1] + g.iloc[2]) / 3


def test_strata_join_by_image_and_leave_unannotated_images_nan():
  avg = frames.average_scores(_long(), keep=("label", "fold"))
  flags = pd.DataFrame({"image": [f"I{i:03d}" for i in range(50)],
                        "ruler": np.arange(50) % 2})
  joined = frames.join_strata(avg, flags)
  assert len(joined) == len(avg)
  assert joined["ruler"].isna().sum() == 10 * 2  # 10 images x 2 arms
  with pytest.raises(ValueError, match="I001 appears more than once"):
    frames.join_strata(avg, pd.concat([flags, flags.iloc[[1]]]))


def test_compare_is_delong_and_bootstrap_of_the_seed_averaged_scores():
  avg = frames.average_scores(_long(), keep=("label", "fold"))
  p = paired.pair(avg, "a", "b")
  y, a, b, f = (p[c].to_numpy() for c in ("label", "a", "b", "fold"))
  got = paired.compare(avg, "a", "b", n_resamples=200)
  want = stats.stratified_delong(y, a, b, f)
  assert (got["n"], got["positives"]) == (60, 20)
  assert got["diff"] == pytest.approx(want["diff"], abs=1e-12)
  assert (got["lo"], got["hi"], got["p"]) == pytest.approx(
      (want["lo"], want["hi"], want["p"]))
  boot = stats.paired_bootstrap_auc_diff(y, a, b, n_resamples=200, strata=f)
  assert (got["boot_lo"], got["boot_hi"]) == (boot["lo"], boot["hi"])
  pooled = paired.compare(avg, "a", "b", within=None, n_resamples=200)
  assert pooled["diff"] == pytest.approx(stats.paired_delong(y, a, b)["diff"])
  with pytest.raises(ValueError, match="no arm 'c'"):
    paired.compare(avg, "a", "c")


def test_compare_by_stratum_compares_within_each_stratum_only():
  avg = frames.average_scores(_long(90), keep=("label", "fold"))
  flags = pd.DataFrame({"image": sorted(set(avg["image"]))[:80]})
  flags["ruler"] = (np.arange(80) // 2) % 2
  joined = frames.join_strata(avg, flags)
  table = paired.compare_by_stratum(joined, "a", "b", "ruler",
                                    n_resamples=100)
  assert table["ruler"].tolist() == [0, 1] and table["n"].sum() == 80
  for value, row in table.set_index("ruler").iterrows():
    sub = joined[joined["ruler"] == value]
    assert row["diff"] == pytest.approx(
        paired.compare(sub, "a", "b", n_resamples=100)["diff"])


def test_interaction_is_the_stats_bootstrap_on_the_paired_frame():
  rng = np.random.default_rng(7)
  n = 120
  y = (np.arange(n) % 3 == 0).astype(int)
  fold = (np.arange(n) // 6) % 2
  stratum = (np.arange(n) // 3) % 2
  # a beats b where stratum is 1 only: a positive interaction.
  a = y * (0.3 + 2 * stratum) + rng.normal(0, 1, n)
  b = y * 0.3 + rng.normal(0, 1, n)
  frame = pd.DataFrame({"image": np.repeat(np.arange(n), 2),
                        "label": np.repeat(y, 2), "fold": np.repeat(fold, 2),
                        "ruler": np.repeat(stratum, 2),
                        "arm": ["a", "b"] * n,
                        "score": np.stack([a, b], 1).ravel()})
  got = paired.interaction(frame, "a", "b", "ruler", n_resamples=200, seed=5)
  want = stats.interaction_bootstrap(y, a, b, stratum == 1, fold,
                                     n_resamples=200, seed=5)
  assert got == want and got["diff"] > 0


def _config(stage_order=("classification", "joint", "gap_control"),
            comparisons=(("primary", "joint", "gap_control", "q"),)):
  return {"stages": {"classification": {"report_as": "Step 2: GAP"},
                     "segmentation": {"report_as": ""},
                     "joint": {"report_as": "RAP (lambda 7.5)"},
                     "joint_lambda1": {"report_as": "RAP (lambda 1)"},
                     "gap_control": {"report_as": "GAP control"}},
          "stage_order": list(stage_order),
          "rankopt": {"enabled": True, "report_as": "RAP + RankOpt",
                      "logistic_regression": False,
                      "logistic_regression_report_as": "RAP + LR"},
          "report": {"comparisons": [list(c) for c in comparisons],
                     "sensitivity_comparisons": [["s", "rankopt", "joint"]]}}


def test_arms_are_named_by_stage_and_head_whatever_their_labels():
  config = _config()
  assert design.trained_arms(config) == {
      "classification": "step_2_gap", "joint": "rap_lambda_7.5",
      "gap_control": "gap_control", "rankopt": "rap_rankopt"}
  config["stages"]["joint"]["report_as"] = "RAP renamed"
  kept, notes = design.applicable(config)
  assert [c.name for c in kept] == ["primary", "s"] and notes == []
  assert design.resolve(kept, design.trained_arms(config), design.AUC)[0].a \
      == "rap_renamed"


def test_a_comparison_of_an_unknown_or_untrained_arm_is_never_silent():
  with pytest.raises(ValueError, match="no arm 'joint_typo'"):
    design.applicable(_config(comparisons=(("x", "joint_typo", "joint", ""),)))
  kept, notes = design.applicable(_config(
      comparisons=(("lambda", "joint_lambda1", "joint", ""),)))
  assert [c.name for c in kept] == ["s"]
  assert notes == ["comparison 'lambda' left out: arm joint_lambda1 is not "
                   "trained (stage_order / rankopt)"]
  kept, _ = design.applicable(_config())
  with pytest.raises(ValueError, match="compares arm 'gap_control'"):
    design.resolve(kept, {"joint": "rap_lambda_7.5"}, design.AUC)
  assert design.check_columns({"joint": "rap"}, ["rap", "extra"], "f.csv") == [
      "f.csv: column extra is no arm of arms.csv"]


def test_design_files_round_trip(tmp_path):
  kept, _ = design.applicable(_config())
  arms = design.trained_arms(_config())
  design.write(str(tmp_path), arms, kept)
  assert design.read(str(tmp_path)) == (arms, kept)


def test_split_frame_reads_runs_into_one_tidy_frame_with_arms_by_name(
    tmp_path):
  config = _config()
  for fold in (0, 1):
    run = tmp_path / f"r{fold}"
    os.makedirs(run / "predictions" / "test")
    (run / "config.json").write_text(json.dumps(
        {**config, "seed": 0, "data": {"crossval": {"fold": fold}}}))
    (run / "results.json").write_text(json.dumps({"rows": [
        {"model": "RAP (lambda 7.5)"}, {"model": "GAP control"}]}))
    for column, score in (("rap_lambda_7.5", 0.25), ("gap_control", 0.5)):
      (run / "predictions" / "test" / f"{column}.csv").write_text(
          "image,label,score\nI2,1,%r\nI1,0,%r\n" % (score, score + fold))
  frame = runs.split_frame([str(tmp_path / "r0"), str(tmp_path / "r1")],
                           "test")
  assert list(frame.columns) == ["image", "label", "fold", "seed", "arm",
                                 "score"]
  assert len(frame) == 8 and frame["image"].tolist()[:2] == ["I1", "I2"]
  assert set(frame["arm"]) == {"joint", "gap_control"}
  r1 = frame[(frame["fold"] == 1) & (frame["arm"] == "gap_control")]
  assert r1["score"].tolist() == [1.5, 0.5]


def test_committed_cv_verdict_recomputes_from_the_tidy_frame():
  from conftest import REPO
  out = str(REPO / "results" / "crossval_isic2017")
  with open(os.path.join(out, "results.json")) as f:
    saved = json.load(f)
  avg = crossval.seed_averaged_scores(out)
  assert set(avg["n"]) == {5} and avg["image"].nunique() == 2150
  primary = paired.compare(avg, "joint", "gap_control")
  want = saved["seed_averaged"]["comparisons"][0]["stratified"]
  for key in ("diff", "lo", "hi", "p", "boot_lo", "boot_hi"):
    assert primary[key] == pytest.approx(want[key], rel=1e-9), key
  test = crossval.seed_averaged_scores(out, "test")
  assert set(test["n"]) == {25} and "joint_mask_oracle" not in set(test["arm"])
  pooled = paired.compare(test, "joint", "gap_control", within=None,
                          n_resamples=10)
  assert pooled["diff"] == pytest.approx(
      saved["test"]["comparisons"][0]["all"]["diff"], rel=1e-9)


def test_markdown_table_is_the_compact_pipe_table():
  frame = pd.DataFrame([["x", "0.500"], ["y", "-"]], columns=["arm", "AUC"])
  assert tables.markdown_table(frame) == [
      "| arm | AUC |", "|---|---|", "| x | 0.500 |", "| y | - |"]
  assert "| arm   |" in tables.to_markdown(frame)


def test_roc_figure_is_written(tmp_path):
  y = np.array([0, 0, 1, 1, 0, 1])
  s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
  path = str(tmp_path / "roc.png")
  tables.plot_roc(path, y, {"a": s}, "t", (0.884,))
  assert os.path.getsize(path) > 5_000
  assert metrics.roc_auc(y, s) > 0.5
