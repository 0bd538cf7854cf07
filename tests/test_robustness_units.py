"""Disruptions, trap sets and CAM energy on synthetic images with known masks."""

import ml_collections
import numpy as np
import pytest

from rapool_jax import disrupt
from rapool_jax import metrics
from rapool_jax.data import pipeline
from rapool_jax.data import trap


def lesion_image(size=64, value=(180, 60, 40), skin=(220, 170, 150)):
  """A flat skin image with a red disc (the lesion) in the middle."""
  yy, xx = np.mgrid[:size, :size]
  mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 5) ** 2
  image = np.empty((size, size, 3), np.uint8)
  image[:] = skin
  image[mask] = value
  return image, mask.astype(np.uint8)


def test_lesion_only_keeps_lesion_and_fills_skin():
  image, mask = lesion_image()
  out = disrupt.disrupt(image[None], mask[None], "lesion_only")[0]
  np.testing.assert_array_equal(out[mask > 0], image[mask > 0])
  np.testing.assert_array_equal(out[mask == 0],
                                np.broadcast_to([220, 170, 150], out[mask == 0].shape))


def test_background_only_removes_lesion_without_flat_patch():
  image, mask = lesion_image()
  image = image.astype(np.int32)
  rng = np.random.default_rng(0)
  image[mask == 0] += rng.integers(-20, 20, image[mask == 0].shape)
  image = np.clip(image, 0, 255).astype(np.uint8)
  out = disrupt.disrupt(image[None], mask[None], "background_only")[0]
  inside = out[mask > 0].astype(float)
  # The lesion's red is gone: inside now looks like the skin around it.
  skin = image[mask == 0].astype(float).mean(0)
  assert np.abs(inside.mean(0) - skin).max() < 12
  assert np.abs(inside.mean(0) - [180, 60, 40]).max() > 60
  far = np.ones_like(mask, bool)
  far[8:-8, 8:-8] = False  # far from the lesion nothing changes
  np.testing.assert_array_equal(out[far], image[far])


def test_bbox_covers_the_box_only():
  image, mask = lesion_image()
  out = disrupt.disrupt(image[None], mask[None], "bbox")[0]
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  box = out[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  assert (box == [220, 170, 150]).all()
  assert (out[:rows[0]] == image[:rows[0]]).all()


def test_disrupt_refuses_bad_version_and_sizes():
  image, mask = lesion_image()
  with pytest.raises(ValueError, match="--disrupt='blur'"):
    disrupt.disrupt(image[None], mask[None], "blur")
  with pytest.raises(ValueError, match="differ in size"):
    disrupt.disrupt(image[None], mask[None, :32], "bbox")


def test_cam_energy_on_known_maps():
  cam = np.zeros((3, 4, 4))
  cam[0, :2, :2] = 1.0      # all energy in the top-left quarter
  cam[1] = -1.0             # no positive energy
  cam[2, :, :] = 1.0        # uniform: the mask's area share
  cam[2, 3, 3] = -5.0       # negative parts are not energy
  mask = np.zeros((3, 16, 16))
  mask[:, :8, :8] = 1       # the top-left quarter
  mask[2, :, :] = 0
  mask[2, :4, :] = 1        # the top row of cells
  got = metrics.cam_energy_inside(cam, mask)
  assert got[0] == pytest.approx(1.0)
  assert np.isnan(got[1])
  assert got[2] == pytest.approx(4 / 15)


def test_trap_carrier_shares_are_exact():
  labels = np.array([1] * 40 + [0] * 160)
  for bias in (0.0, 0.5, 0.9):
    c = trap.carriers(labels, bias, seed=3)
    assert c[labels == 1].mean() == pytest.approx((1 + bias) / 2, abs=0.013)
    assert c[labels == 0].mean() == pytest.approx((1 - bias) / 2, abs=0.004)
    r = trap.carriers(labels, bias, seed=3, reverse=True)
    assert r[labels == 1].mean() == pytest.approx((1 - bias) / 2, abs=0.013)
  with pytest.raises(ValueError, match="trap.bias"):
    trap.carriers(labels, 1.5, seed=0)


@pytest.mark.parametrize("kind", trap.KINDS)
def test_trap_artefact_stays_off_the_lesion(kind):
  image, mask = lesion_image(size=128)
  big = np.zeros_like(mask)
  big[10:118, 20:108] = 1   # a lesion reaching the ring: drawn around it
  for m in (mask, big):
    out = trap.place_artefact(image, m, kind, angle=0.3)
    changed = (out != image).any(-1)
    assert changed.sum() > 20
    assert not (changed & (m > 0)).any()
    rows, cols = np.nonzero(changed)
    # Inside the disc that 180-degree rotations and a 112 px crop keep.
    assert (np.hypot(rows - 63.5, cols - 63.5) < 56).all()


def test_apply_to_splits_reverses_held_out():
  n, size = 60, 32
  labels = np.array([1] * 20 + [0] * 40, np.int32)
  split = pipeline.Split(
      images=np.full((n, size, size, 3), 200, np.uint8),
      masks=np.zeros((n, size, size), np.uint8), labels=labels,
      has_mask=np.ones(n, bool), ids=np.array([f"i{k:03d}" for k in range(n)]))
  data = ml_collections.ConfigDict(dict(
      train_split="train", val_split="validation",
      trap=dict(kind="square", bias=0.9, seed=0)))
  out = trap.apply_to_splits({"train": split, "test": split}, data)
  marked = {k: (v.images != 200).any((1, 2, 3)) for k, v in out.items()}
  assert marked["train"][labels == 1].mean() > 0.9
  assert marked["test"][labels == 1].mean() < 0.1
  assert marked["test"][labels == 0].mean() > 0.9
  np.testing.assert_array_equal(split.images, 200)  # the input is untouched


def brute_force_interaction(y, a, b, g, folds, n, seed):
  """The interaction's bootstrap by hand: resample each group x fold x label
  cell with replacement, recompute the P*Q-weighted fold differences."""
  rng = np.random.default_rng(seed)

  def fold_diff(rows):
    num, den = 0.0, 0.0
    for f in np.unique(folds[rows]):
      r = rows[folds[rows] == f]
      pq = y[r].sum() * (~y[r]).sum()
      num += pq * (metrics.roc_auc(y[r], a[r]) - metrics.roc_auc(y[r], b[r]))
      den += pq
    return num / den

  cells = {}
  for grp in (True, False):
    for f in np.unique(folds):
      for lab in (True, False):
        cells[grp, f, lab] = np.flatnonzero((g == grp) & (folds == f) & (y == lab))
  reps = []
  for _ in range(n):
    drawn = {k: rng.choice(v, v.size) for k, v in cells.items()}
    parts = [fold_diff(np.concatenate([v for k, v in drawn.items() if k[0] == grp]))
             for grp in (True, False)]
    reps.append(parts[0] - parts[1])
  return np.array(reps)


@pytest.mark.slow  # a whole tiny run, or a bootstrap by hand: second tier
def test_interaction_matches_brute_force_bootstrap():
  from rapool_jax import stats
  rng = np.random.default_rng(0)
  n = 200
  y = rng.random(n) < 0.3
  folds = rng.integers(0, 2, n)
  g = rng.random(n) < 0.5
  a = y * 1.0 + rng.normal(0, 1, n) + (g & y) * 2.0   # a is better in the group
  b = y * 1.0 + rng.normal(0, 1, n)
  got = stats.interaction_bootstrap(y, a, b, g, folds, n_resamples=2000, seed=1)
  ref = brute_force_interaction(y, a, b, g, folds, 400, seed=2)
  d_in = stats.stratified_delong(y[g], a[g], b[g], folds[g])["diff"]
  d_out = stats.stratified_delong(y[~g], a[~g], b[~g], folds[~g])["diff"]
  assert got["diff"] == pytest.approx(d_in - d_out)
  assert got["se"] == pytest.approx(ref.std(ddof=1), rel=0.15)
  assert got["lo"] == pytest.approx(np.percentile(ref, 2.5), abs=0.03)
  assert got["hi"] == pytest.approx(np.percentile(ref, 97.5), abs=0.03)
  assert got["se_delong"] == pytest.approx(got["se"], rel=0.2)
  assert got["diff"] > 0.05 and got["p"] < 0.05


def test_holm_on_known_values():
  from rapool_jax import stats
  got = stats.holm([0.01, 0.04, 0.03, 0.2])
  np.testing.assert_allclose(got, [0.04, 0.09, 0.09, 0.2])


def test_recipe_two_variant_is_runlocal_with_testsplit_arms():
  from conftest import load_module
  module = load_module("configs/isic2017.py")
  two, local = module.get_config("runlocal,testsplit"), module.get_config("runlocal")
  assert two.stage_order == ("classification", "segmentation", "joint",
                             "joint_gap_seg", "gap_control")
  for key in ("model", "optimizer"):
    assert two[key].to_dict() == local[key].to_dict()
  assert two.stages.gap_control.max_steps == two.stages.joint.max_steps == 800
  assert two.stages.gap_control.init_from == "classification"
  assert (two.data.train_split, two.data.eval_split, two.rankopt.threshold_split) == (
      "train", "test", "validation")


def test_trap_on_crossval_splits_is_refused_in_a_population(tiny_config):
  from rapool_jax import errors
  from rapool_jax import run_population
  c = tiny_config
  c.data.crossval.num_folds = 3
  c.data.crossval.source_splits = ("train", "validation", "test")
  c.data.train_split, c.data.val_split, c.data.eval_split = "cv_train", "cv_val", "cv_test"
  c.data.trap.kind = "square"
  members = run_population.make_members([0, 1], [0])
  with pytest.raises(errors.UserError, match="config.data.trap.kind: a trap set on cross"):
    run_population.load_data(c, members)
