"""Tests for the `synthetic_derm` TFDS builder and its generator."""

import sys

import numpy as np
import pytest

from rapool_jax.data import synthetic_derm as sd

TINY = dict(image_size=32, num_train=40, num_validation=20, num_test=20, seed=0)
SPLIT_SIZES = {"train": 40, "validation": 20, "test": 20}


def _read_all(builder):
  """{split: [examples]} read back through the array_record data source."""
  sources = builder.as_data_source()
  return {split: [src[i] for i in range(len(src))]
          for split, src in sources.items()}


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
  builder = sd.make_builder(str(tmp_path_factory.mktemp("syn_a")), **TINY)
  builder.download_and_prepare()
  return builder, _read_all(builder)


@pytest.fixture(scope="module")
def stats():
  # Statistics straight from the generator: 3000 examples in a few seconds.
  return {"train": sd.generate_examples("train", 2000, image_size=32),
          "test": sd.generate_examples("test", 1000, image_size=32)}


def test_build_and_read_without_tensorflow(tiny_build):
  builder, data = tiny_build
  assert "tensorflow" not in sys.modules
  assert {k: len(v) for k, v in data.items()} == SPLIT_SIZES
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == (
      SPLIT_SIZES)


def test_feature_contract(tiny_build):
  builder, data = tiny_build
  features = builder.info.features
  assert set(features) >= {"image", "mask", "has_mask", "melanoma",
                           "seborrheic_keratosis", "image_id"}
  assert features["image"].shape == (32, 32, 3)
  assert features["mask"].shape == (32, 32, 1)
  for ex in data["train"]:
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    assert ex["mask"].shape == (32, 32, 1) and ex["mask"].dtype == np.uint8
    assert bool(ex["has_mask"])
    assert ex["melanoma"] in (0, 1)
    assert ex["seborrheic_keratosis"] in (0, 1)
    assert ex["melanoma"] + ex["seborrheic_keratosis"] <= 1


def test_masks_binary_and_nonempty(tiny_build):
  _, data = tiny_build
  for split in data.values():
    for ex in split:
      assert set(np.unique(ex["mask"])) == {0, 255}
      # The lesion is a blob, not a speck or the whole frame.
      assert 0.02 < (ex["mask"] > 0).mean() < 0.6


def test_image_ids_unique(tiny_build):
  _, data = tiny_build
  ids = [ex["image_id"] for split in data.values() for ex in split]
  ids = [i.decode() if isinstance(i, bytes) else i for i in ids]
  assert len(set(ids)) == len(ids) == sum(SPLIT_SIZES.values())
  assert all(i.startswith("SYN_") for i in ids)


def test_stored_examples_match_generator(tiny_build):
  _, data = tiny_build
  for ex in data["validation"][:5]:
    split, index = ex["image_id"].decode().split("_")[1:]
    ref = sd.generate_example(split, int(index), image_size=32, seed=0)
    np.testing.assert_array_equal(ex["image"], ref["image"])
    np.testing.assert_array_equal(ex["mask"], ref["mask"])
    assert ex["melanoma"] == ref["melanoma"]
    assert bool(ex["has_disc"]) == ref["has_disc"]


def test_build_is_deterministic(tiny_build, tmp_path):
  _, data = tiny_build
  builder = sd.make_builder(str(tmp_path), **TINY)
  builder.download_and_prepare()
  again = _read_all(builder)
  for split in data:
    first = {ex["image_id"]: ex for ex in data[split]}
    for ex in again[split]:
      np.testing.assert_array_equal(ex["image"], first[ex["image_id"]]["image"])
      np.testing.assert_array_equal(ex["mask"], first[ex["image_id"]]["mask"])


def test_generator_is_deterministic_and_seeded():
  a = sd.generate_examples("train", 8, image_size=32, seed=3)
  b = sd.generate_examples("train", 8, image_size=32, seed=3)
  c = sd.generate_examples("train", 8, image_size=32, seed=4)
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["mask"], b["mask"])
  assert not np.array_equal(a["image"], c["image"])
  # Seeded per (seed, split, index): a batch's tail equals a shifted batch.
  tail = sd.generate_examples("train", 3, image_size=32, seed=3, start=5)
  np.testing.assert_array_equal(a["image"][5:], tail["image"])


def test_config_names_follow_parameters(tmp_path):
  default = sd.make_builder(str(tmp_path))
  other = sd.make_builder(str(tmp_path), **TINY)
  assert default.builder_config.name == "s64_tr1200_va300_te600_seed0"
  assert other.builder_config.name == "s32_tr40_va20_te20_seed0"
  assert default.data_dir != other.data_dir


def test_class_shares(stats):
  for d in stats.values():
    mel = d["melanoma"].mean()
    sk = d["seborrheic_keratosis"].mean()
    assert 0.16 < mel < 0.22, mel
    assert 0.12 < sk < 0.18, sk
    assert not np.any(d["melanoma"] & d["seborrheic_keratosis"])


def test_disc_is_a_train_shortcut_reversed_in_test(stats):
  def p_disc(d):
    mel = d["melanoma"] == 1
    return d["has_disc"][mel].mean(), d["has_disc"][~mel].mean()

  mel_train, rest_train = p_disc(stats["train"])
  assert mel_train < 0.06 and rest_train > 0.33
  mel_test, rest_test = p_disc(stats["test"])
  assert mel_test > rest_test + 0.2


def test_disc_stays_outside_lesion(stats):
  for d in stats.values():
    lesion = d["mask"][..., 0] > 0
    assert not np.any(d["disc_mask"] & lesion)
    np.testing.assert_array_equal(d["disc_mask"].any((1, 2)), d["has_disc"])
    assert np.all(lesion.any((1, 2)))
