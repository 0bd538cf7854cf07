"""Tests for the `isic2017` TFDS builder: real 256 px copy and fake files."""

from __future__ import annotations

import io
import json
import os
import pathlib
import zipfile

import numpy as np
from PIL import Image
import pytest

import isic_fixtures as fx
from rapool_jax.data import folds
from rapool_jax.data import isic2017

# The read-only 256 px copy lives next to the repository (../shared/data).
SHARED = (pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
          / "isic2017-256")
REAL_SIZE = 32  # Small: the whole train + validation build takes ~2 s.
SIZE = 16


def load(builder, split: str) -> dict[str, dict]:
  """All examples of a split, by image id, decoded to numpy."""
  source = builder.as_data_source(split=split)
  out = {}
  for i in range(len(source)):
    ex = dict(source[i])
    for key in ("image_id", "sex"):
      ex[key] = ex[key].decode() if isinstance(ex[key], bytes) else ex[key]
    out[ex["image_id"]] = ex
  return out


def lesion_darker(ex) -> bool | None:
  """Whether the masked region is darker than the rest; None if undefined."""
  inside = ex["mask"][..., 0] > 0
  if inside.all() or not inside.any():
    return None
  gray = ex["image"].astype(np.float32).mean(-1)
  return bool(gray[inside].mean() < gray[~inside].mean())


def assert_error(fn, starts_with, *contains) -> str:
  """``fn()`` raises a one-line ISICDataError naming ``starts_with`` first."""
  with pytest.raises(isic2017.ISICDataError) as info:
    fn()
  message = str(info.value)
  assert "\n" not in message, message
  assert message.startswith(os.fspath(starts_with)), message
  for text in contains:
    assert text in message, message
  return message


# ----------------------------------------------------------------------------
# Real data (the shared 256 px copy of train, validation and test).
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory):
  if not SHARED.is_dir():
    pytest.skip(f"ISIC 2017 256 px copy not found at {SHARED}")
  builder = isic2017.prepare(tmp_path_factory.mktemp("isic_real"), SHARED,
                             image_size=REAL_SIZE)
  return builder, {split: load(builder, split)
                   for split in ("train", "validation")}


def test_real_counts_and_labels(real):
  builder, splits = real
  # The shared copy holds the official test split too (no masks, labels for
  # reporting only).
  assert set(builder.info.splits) == {"train", "validation", "test"}
  splits = {**splits, "test": load(builder, "test")}
  assert {s: len(v) for s, v in splits.items()} == {
      "train": 2000, "validation": 150, "test": 600}
  melanomas = {s: sum(int(e["melanoma"]) for e in v.values())
               for s, v in splits.items()}
  assert melanomas == {"train": 374, "validation": 30, "test": 117}
  assert not any(bool(e["has_mask"]) for e in splits["test"].values())
  for examples in splits.values():
    for image_id, ex in examples.items():
      # Superpixel / metadata files would give other ids or extra examples.
      assert len(image_id) == 12 and image_id.startswith("ISIC_"), image_id
      assert int(ex["melanoma"]) + int(ex["seborrheic_keratosis"]) <= 1


def test_real_masks_binary_and_aligned(real):
  _, splits = real
  for examples in splits.values():
    darker = []
    for ex in examples.values():
      assert ex["image"].shape == (REAL_SIZE, REAL_SIZE, 3)
      assert ex["image"].dtype == np.uint8
      assert ex["mask"].shape == (REAL_SIZE, REAL_SIZE, 1)
      assert set(np.unique(ex["mask"])) <= {0, 255}
      assert bool(ex["has_mask"])
      darker.append(lesion_darker(ex))
    darker = [d for d in darker if d is not None]
    assert np.mean(darker) > 0.9, np.mean(darker)


def test_real_pixels_are_the_resized_source(real):
  _, splits = real
  ex = splits["validation"]["ISIC_0001769"]
  with zipfile.ZipFile(SHARED / "ISIC-2017_Validation_Data.zip") as zf:
    data = zf.read("ISIC-2017_Validation_Data/ISIC_0001769.jpg")
  want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize(
      (REAL_SIZE, REAL_SIZE), Image.BICUBIC), np.float32)
  # Not exact: the builder decodes large JPEGs at reduced scale (draft) first.
  diff = np.abs(ex["image"].astype(np.float32) - want)
  assert diff.mean() < 1.0 and diff.max() <= 8, (diff.mean(), diff.max())


def test_real_age_and_sex(real):
  _, splits = real
  for examples in splits.values():
    ages = np.array([float(e["age"]) for e in examples.values()])
    sexes = {e["sex"] for e in examples.values()}
    assert (ages >= 0).mean() > 0.5
    assert ((ages == -1) | ((ages >= 0) & (ages <= 100))).all()
    assert {"male", "female"} <= sexes <= {"male", "female", ""}


def test_real_near_duplicates_share_a_group(real):
  builder, splits = real
  pooled = {**splits["train"], **splits["validation"]}
  ids = sorted(pooled)
  groups = folds.near_duplicate_groups(
      np.stack([pooled[i]["image"] for i in ids]),
      folds.NEAR_DUPLICATE_THRESHOLD)
  group = dict(zip(ids, groups))
  # Pixel-identical or the same image resaved (issue 30's audit).
  for a, b in [("0012127", "0012970"), ("0012290", "0013594"),
               ("0012672", "0012673"), ("0012756", "0013184")]:
    assert group[f"ISIC_{a}"] == group[f"ISIC_{b}"], (a, b)
  sizes = np.bincount(groups)
  assert 4 <= (sizes > 1).sum() <= 40 and sizes.max() <= 3, sizes.max()
  test = load(builder, "test")
  test_ids = sorted(test)
  copies = folds.near_copies(np.stack([test[i]["image"] for i in test_ids]),
                             np.stack([pooled[i]["image"] for i in ids]),
                             folds.NEAR_DUPLICATE_THRESHOLD)
  found = {t: ids[c] for t, c in zip(test_ids, copies) if c >= 0}
  for t, c in [("0015982", "0012175"), ("0016018", "0012271"),
               ("0016002", "0012221")]:
    assert found.get(f"ISIC_{t}") == f"ISIC_{c}", (t, c)
  assert 7 <= len(found) <= 40, len(found)


def test_real_zip_and_extracted_folders_agree(real, tmp_path):
  _, splits = real
  manual = tmp_path / "manual"
  # The required train split from fake files keeps this build small.
  fx.write_split(manual, fx.make_split("Training"))
  for stem in ("ISIC-2017_Validation_Data",
               "ISIC-2017_Validation_Part1_GroundTruth"):
    with zipfile.ZipFile(SHARED / f"{stem}.zip") as zf:
      zf.extractall(manual)
  csv = "ISIC-2017_Validation_Part3_GroundTruth.csv"
  (manual / csv).write_bytes((SHARED / csv).read_bytes())
  builder = isic2017.prepare(tmp_path / "data", manual, image_size=REAL_SIZE)
  extracted = load(builder, "validation")
  zipped = splits["validation"]
  assert sorted(extracted) == sorted(zipped)
  for image_id, ex in zipped.items():
    for key, value in ex.items():
      np.testing.assert_array_equal(extracted[image_id][key], value,
                                    err_msg=f"{image_id} {key}")


# ----------------------------------------------------------------------------
# Fake files: layouts, optional parts, re-runs.
# ----------------------------------------------------------------------------


def build(tmp_path, manual, **kwargs):
  return isic2017.prepare(tmp_path / "data", manual, image_size=SIZE, **kwargs)


@pytest.fixture
def manual(tmp_path):
  """A manual_dir with the fake train split (zips) only."""
  path = tmp_path / "manual"
  fx.write_split(path, fx.make_split("Training"))
  return path


def test_fake_test_split_built_validation_skipped(tmp_path, manual):
  fx.write_split(manual, fx.make_split("Test_v2", fx.default_images(100)))
  builder = build(tmp_path, manual)
  assert builder.info.splits["train"].num_examples == 4
  assert set(builder.info.splits) == {"train", "test"}
  assert builder.info.metadata["has_masks"] == {"train": True, "test": True}
  test = load(builder, "test")
  assert sorted(test) == [f"ISIC_{i:07d}" for i in range(100, 104)]
  for ex in test.values():
    assert ex["image"].shape == (SIZE, SIZE, 3)
    assert ex["mask"].shape == (SIZE, SIZE, 1)
    assert set(np.unique(ex["mask"])) == {0, 255}
    assert bool(ex["has_mask"]) and lesion_darker(ex)
  assert [int(test[f"ISIC_{i:07d}"]["melanoma"]) for i in range(100, 104)] == [
      1, 0, 0, 0]
  assert int(test["ISIC_0000101"]["seborrheic_keratosis"]) == 1
  assert (float(test["ISIC_0000100"]["age"]), test["ISIC_0000100"]["sex"]) == (
      70.0, "male")
  assert (float(test["ISIC_0000102"]["age"]), test["ISIC_0000102"]["sex"]) == (
      -1.0, "")


def test_fake_zip_and_folder_layouts_agree(tmp_path):
  files = fx.make_split("Training")
  # Strays that zip tools and file browsers leave; none is an example.
  files.data["__MACOSX/ISIC-2017_Training_Data/._ISIC_0000000.jpg"] = b"x"
  files.data["ISIC-2017_Training_Data/.DS_Store"] = b"x"
  files.data["ISIC-2017_Training_Data/sub/.DS_Store"] = b"x"
  builders = []
  for as_zip in (True, False):
    manual = tmp_path / f"manual_{as_zip}"
    fx.write_split(manual, files, as_zip=as_zip)
    builders.append(isic2017.prepare(tmp_path / f"data_{as_zip}", manual,
                                     image_size=SIZE))
  zipped, folder = (load(b, "train") for b in builders)
  assert sorted(zipped) == sorted(folder)
  for image_id, ex in zipped.items():
    for key, value in ex.items():
      np.testing.assert_array_equal(folder[image_id][key], value)


def test_masks_optional_outside_train(tmp_path, manual):
  fx.write_split(manual, fx.make_split("Validation", fx.default_images(10)),
                 masks=False)
  builder = build(tmp_path, manual)
  assert builder.info.metadata["has_masks"] == {"train": True,
                                                "validation": False}
  for ex in load(builder, "validation").values():
    assert not bool(ex["has_mask"])
    assert ex["mask"].shape == (SIZE, SIZE, 1) and not ex["mask"].any()


def test_train_masks_required_unless_waived(tmp_path):
  manual = tmp_path / "manual"
  fx.write_split(manual, fx.make_split("Training"), masks=False)
  assert_error(lambda: build(tmp_path, manual),
               manual / "ISIC-2017_Training_Part1_GroundTruth.zip",
               "require_train_masks=False")
  builder = build(tmp_path, manual, require_train_masks=False)
  assert not any(bool(e["has_mask"]) for e in load(builder, "train").values())
  # The data built without masks must not pass for data with masks.
  assert_error(lambda: build(tmp_path, manual), builder.data_dir,
               "without training masks")


def _build_files(builder) -> dict:
  return {p: p.stat().st_mtime_ns
          for p in pathlib.Path(builder.data_dir).iterdir()}


def test_rerun_with_the_same_files_reuses_the_build(tmp_path, manual, capsys):
  builder = build(tmp_path, manual)
  files = _build_files(builder)
  source = builder.info.metadata["source"]
  assert source["manual_dir"] == os.path.abspath(manual)
  assert set(source["files"]) == {
      "ISIC-2017_Training_Data.zip", "ISIC-2017_Training_Part1_GroundTruth.zip",
      "ISIC-2017_Training_Part3_GroundTruth.csv"}
  # The same files copied elsewhere: the same source, no rebuild.
  moved = tmp_path / "moved"
  manual.rename(moved)
  capsys.readouterr()
  assert _build_files(build(tmp_path, moved)) == files
  assert capsys.readouterr().out == ""
  # A folder that no longer exists reuses the build, saying what it was.
  again = build(tmp_path, manual)
  assert _build_files(again) == files
  assert f"built from {os.path.abspath(manual)}" in capsys.readouterr().out
  assert len(load(again, "train")) == 4


def test_changed_source_files_rebuild_the_data_set(tmp_path, manual, capsys):
  build(tmp_path, manual)
  # Another folder, one label flipped: same names, same sizes.
  other = tmp_path / "other"
  files = fx.make_split("Training")
  files.labels = files.labels.replace("ISIC_0000003,0.0", "ISIC_0000003,1.0")
  fx.write_split(other, files)
  builder = build(tmp_path, other)
  out = capsys.readouterr().out
  assert "rebuilding" in out and (
      "ISIC-2017_Training_Part3_GroundTruth.csv content changed") in out, out
  assert int(load(builder, "train")["ISIC_0000003"]["melanoma"]) == 1
  # Validation files added later: the next run builds the split.
  fx.write_split(other, fx.make_split("Validation", fx.default_images(10)))
  builder = build(tmp_path, other)
  assert "ISIC-2017_Validation_Data.zip added" in capsys.readouterr().out
  assert set(builder.info.splits) == {"train", "validation"}
  # An empty folder stops with the build kept; the old build is not used.
  empty = tmp_path / "empty"
  empty.mkdir()
  assert_error(lambda: build(tmp_path, empty), empty, "no ISIC 2017 training")
  assert set(build(tmp_path, other).info.splits) == {"train", "validation"}


def test_a_build_without_a_source_record_is_rebuilt(tmp_path, manual, capsys):
  builder = build(tmp_path, manual)
  info = pathlib.Path(builder.data_dir) / "metadata.json"
  metadata = json.loads(info.read_text())
  del metadata["source"]
  info.write_text(json.dumps(metadata))
  build(tmp_path, manual)
  assert "records no source files" in capsys.readouterr().out
  assert "source" in json.loads(info.read_text())


def test_truncated_source_zip_is_named(tmp_path, manual):
  build(tmp_path, manual)
  path = manual / "ISIC-2017_Training_Data.zip"
  path.write_bytes(path.read_bytes()[:200])
  assert_error(lambda: build(tmp_path, manual), path, "truncated or corrupt")


def test_failed_build_leaves_no_data_and_can_rerun(tmp_path):
  manual = tmp_path / "manual"
  files = fx.make_split("Training")
  good = files.data[files.image_member("ISIC_0000003")]
  files.data[files.image_member("ISIC_0000003")] = good[:len(good) // 2]
  fx.write_split(manual, files)
  assert_error(lambda: build(tmp_path, manual),
               manual / "ISIC-2017_Training_Data.zip", "ISIC_0000003.jpg")
  leftovers = [p.name for p in (tmp_path / "data" / "isic2017").rglob("*")
               if p.is_dir() and p.parent.name == f"size{SIZE}"]
  assert leftovers == []
  files.data[files.image_member("ISIC_0000003")] = good
  fx.write_split(manual, files)
  assert build(tmp_path, manual).info.splits["train"].num_examples == 4


def test_config_name_follows_the_image_size():
  assert isic2017.ISIC2017Config().name == "size256"
  assert isic2017.ISIC2017Config(image_size=SIZE).name == f"size{SIZE}"


# ----------------------------------------------------------------------------
# Bad input: one-line ISICDataError naming the file at fault.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("as_zip", [True, False])
def test_image_without_label_row(tmp_path, as_zip):
  manual = tmp_path / "manual"
  files = fx.make_split("Training")
  files.labels = "".join(l for l in files.labels.splitlines(True)
                         if "ISIC_0000002" not in l)
  fx.write_split(manual, files, as_zip=as_zip)
  member = files.image_member("ISIC_0000002")
  where = (f"{manual / files.data_stem}.zip:{member}" if as_zip
           else manual / member)
  assert_error(lambda: build(tmp_path, manual), where, "no label row",
               files.labels_name)


def test_label_row_without_image(tmp_path):
  manual = tmp_path / "manual"
  files = fx.make_split("Training")
  del files.data[files.image_member("ISIC_0000002")]
  fx.write_split(manual, files)
  assert_error(lambda: build(tmp_path, manual), manual / files.labels_name,
               "ISIC_0000002", "no image")


def test_mask_size_differs_from_image(tmp_path):
  manual = tmp_path / "manual"
  files = fx.make_split("Training")
  files.masks[files.mask_member("ISIC_0000001")] = fx.encode(
      np.zeros((10, 12), np.uint8), "PNG")
  fx.write_split(manual, files)
  assert_error(lambda: build(tmp_path, manual),
               f"{manual / files.masks_stem}.zip:"
               f"{files.mask_member('ISIC_0000001')}",
               "12x10", "30x44", "ISIC_0000001.jpg")


@pytest.mark.parametrize("corruption", ["garbage", "truncated"])
def test_corrupt_image(tmp_path, corruption):
  manual = tmp_path / "manual"
  files = fx.make_split("Training")
  member = files.image_member("ISIC_0000000")
  data = files.data[member]
  files.data[member] = (b"not a jpeg" if corruption == "garbage"
                        else data[:len(data) // 2])
  fx.write_split(manual, files, as_zip=False)
  assert_error(lambda: build(tmp_path, manual), manual / member,
               "unreadable or corrupt image")


def test_labels_csv_missing_columns(tmp_path):
  manual = tmp_path / "manual"
  files = fx.make_split("Training")
  files.labels = "image_id,melanoma\nISIC_0000000,1.0\n"
  fx.write_split(manual, files)
  assert_error(lambda: build(tmp_path, manual), manual / files.labels_name,
               "missing column(s) seborrheic_keratosis",
               "expected columns image_id, melanoma, seborrheic_keratosis")


def test_metadata_csv_missing_columns(tmp_path):
  manual = tmp_path / "manual"
  files = fx.make_split("Training")
  member = f"{files.data_stem}/{files.data_stem}_metadata.csv"
  files.data[member] = b"image_id,age\nISIC_0000000,50\n"
  fx.write_split(manual, files)
  assert_error(lambda: build(tmp_path, manual),
               f"{manual / files.data_stem}.zip:{member}",
               "missing column(s) age_approximate, sex")


def test_label_value_not_binary(tmp_path):
  manual = tmp_path / "manual"
  files = fx.make_split("Training")
  files.labels = files.labels.replace("ISIC_0000003,0.0", "ISIC_0000003,0.5")
  fx.write_split(manual, files)
  assert_error(lambda: build(tmp_path, manual), manual / files.labels_name,
               "line 5", "melanoma='0.5'")


def test_duplicate_label_row(tmp_path):
  manual = tmp_path / "manual"
  files = fx.make_split("Training")
  files.labels += "ISIC_0000001,0.0,1.0\n"
  fx.write_split(manual, files)
  assert_error(lambda: build(tmp_path, manual), manual / files.labels_name,
               "duplicate row for ISIC_0000001")


@pytest.mark.parametrize("exists", [True, False])
def test_manual_dir_without_files(tmp_path, exists):
  manual = tmp_path / "manual"
  if exists:
    manual.mkdir()
    (manual / "README.txt").write_text("not ISIC")
  assert_error(lambda: build(tmp_path, manual), manual,
               "ISIC-2017_Training_Data.zip",
               "ISIC-2017_Training_Part1_GroundTruth.zip",
               "ISIC-2017_Training_Part3_GroundTruth.csv")


def test_split_with_data_but_no_labels_csv(tmp_path, manual):
  fx.write_split(manual, fx.make_split("Validation"), labels=False)
  assert_error(lambda: build(tmp_path, manual),
               manual / "ISIC-2017_Validation_Part3_GroundTruth.csv",
               "not found", "validation")


def test_split_with_labels_csv_but_no_data(tmp_path, manual):
  fx.write_split(manual, fx.make_split("Test_v2"), data=False)
  assert_error(lambda: build(tmp_path, manual),
               manual / "ISIC-2017_Test_v2_Data.zip", "not found",
               "folder ISIC-2017_Test_v2_Data/")


def test_mask_missing_while_others_have_masks(tmp_path):
  manual = tmp_path / "manual"
  files = fx.make_split("Training")
  del files.masks[files.mask_member("ISIC_0000002")]
  fx.write_split(manual, files, as_zip=False)
  assert_error(lambda: build(tmp_path, manual), manual / files.masks_stem,
               "ISIC_0000002_segmentation.png", "image ISIC_0000002")


def test_mask_without_image(tmp_path):
  manual = tmp_path / "manual"
  files = fx.make_split("Training")
  files.masks[files.mask_member("ISIC_0000009")] = fx.encode(
      np.zeros((5, 5), np.uint8), "PNG")
  fx.write_split(manual, files)
  assert_error(lambda: build(tmp_path, manual),
               f"{manual / files.masks_stem}.zip:"
               f"{files.mask_member('ISIC_0000009')}",
               "no image or label row")


def test_image_twice_in_nested_folders(tmp_path):
  manual = tmp_path / "manual"
  files = fx.make_split("Training")
  member = files.image_member("ISIC_0000001")
  # Extracting a zip into a folder of its own name nests a second copy.
  files.data[f"{files.data_stem}/{member}"] = files.data[member]
  fx.write_split(manual, files, as_zip=False)
  assert_error(lambda: build(tmp_path, manual),
               manual / files.data_stem / member, "duplicate of",
               "ISIC_0000001.jpg")
