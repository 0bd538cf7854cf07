"""predict: challenge-format CSV and masks from a finished run."""

import csv
import os
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image
import pytest

from conftest import REPO
from rapool_jax import predict
from rapool_jax import rankopt
from rapool_jax.data import synthetic_derm


def _write_images(folder, sizes):
  os.makedirs(folder, exist_ok=True)
  ids = []
  for i, (w, h) in enumerate(sizes):
    example = synthetic_derm.generate_example("test", i, image_size=32)
    image = Image.fromarray(example["image"]).resize((w, h))
    image_id = f"ISIC_{9000000 + i:07d}"
    image.save(os.path.join(folder, f"{image_id}.jpg"), quality=95)
    ids.append(image_id)
  # Not images to classify: the official zips carry these too.
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(
      os.path.join(folder, f"{ids[0]}_superpixels.png"))
  open(os.path.join(folder, "ISIC-2017_Test_v2_Data_metadata.csv"), "w").write(
      "image_id,age_approximate,sex\n")
  return ids


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_predict_writes_scorer_format_and_masks(tiny_run, tmp_path):
  workdir, _ = tiny_run
  sizes = [(45, 30), (32, 32), (70, 50)]
  ids = _write_images(str(tmp_path / "images"), sizes)
  rows = predict.predict(workdir, str(tmp_path / "images"),
                         str(tmp_path / "preds.csv"), str(tmp_path / "masks"),
                         batch_size=2)
  table = _read_csv(tmp_path / "preds.csv")
  # isic-challenge-scoring: column "image", then the truth's category columns,
  # every value a probability in [0, 1], one row per image.
  assert list(table[0]) == ["image", "melanoma"]
  assert [r["image"] for r in table] == ids
  values = np.array([float(r["melanoma"]) for r in table])
  assert np.all((values >= 0) & (values <= 1))
  for image_id, (w, h) in zip(ids, sizes):
    mask = np.asarray(Image.open(tmp_path / "masks" / f"{image_id}_segmentation.png"))
    assert mask.shape == (h, w) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
  # The zip gives the same predictions as the folder.
  with zipfile.ZipFile(tmp_path / "images.zip", "w") as zf:
    for name in os.listdir(tmp_path / "images"):
      zf.write(tmp_path / "images" / name, f"ISIC-2017_Test_v2_Data/{name}")
  rows_zip = predict.predict(workdir, str(tmp_path / "images.zip"),
                             str(tmp_path / "preds_zip.csv"))
  assert [r["image"] for r in rows_zip] == ids
  np.testing.assert_allclose([r["melanoma"] for r in rows_zip],
                             [r["melanoma"] for r in rows], rtol=1e-5)


def test_rankopt_probability_is_monotone_with_threshold_at_half():
  scores = np.array([-3.0, -1.0, 0.2, 0.5, 4.0])
  p = predict.rankopt_probability(scores, threshold=0.2, scale=1.5)
  assert np.all(np.diff(p) > 0) and p[2] == pytest.approx(0.5)
  assert np.all((p > 0) & (p < 1))


def test_corrupt_image_is_a_one_line_error(tiny_run, tmp_path):
  workdir, _ = tiny_run
  folder = tmp_path / "bad"
  _write_images(str(folder), [(32, 32)])
  (folder / "ISIC_0000001.jpg").write_bytes(b"not a jpeg")
  proc = subprocess.run(
      [sys.executable, "-m", "rapool_jax.predict", "--workdir", workdir,
       "--images", str(folder), "--out", str(tmp_path / "p.csv")],
      cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "ISIC_0000001.jpg" in lines[0], proc.stderr


def test_corrupt_config_json_is_a_one_line_error(tmp_path):
  from rapool_jax import errors
  (tmp_path / "config.json").write_text('{"model": {"depth": ')
  with pytest.raises(errors.UserError,
                     match=r"config.json: not the JSON of a run's config"):
    predict.load_run(str(tmp_path))


@pytest.mark.slow  # a whole run of its own
def test_three_class_head_end_to_end(tiny_config, tmp_path):
  from rapool_jax import run
  tiny_config.data.task = "three_class"
  for name in tiny_config.stage_order:
    tiny_config.stages[name].max_steps = 1
  workdir = str(tmp_path / "run3")
  results = run.train_and_evaluate(tiny_config, workdir)
  assert [r["model"] for r in results["rows"]][-1] == "Step 4 + RankOpt"
  ids = _write_images(str(tmp_path / "images"), [(40, 30), (32, 32)])
  predict.predict(workdir, str(tmp_path / "images"), str(tmp_path / "p.csv"))
  table = _read_csv(tmp_path / "p.csv")
  assert list(table[0]) == ["image", "melanoma", "seborrheic_keratosis"]
  assert [r["image"] for r in table] == ids
  for r in table:
    assert 0 <= float(r["melanoma"]) <= 1
    assert 0 <= float(r["seborrheic_keratosis"]) <= 1


def test_isic_config_variants():
  from conftest import REPO
  import importlib.util
  spec = importlib.util.spec_from_file_location("isic_cfg",
                                                REPO / "configs" / "isic2017.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  paper = module.get_config("paper")
  assert (paper.model.depth, paper.data.crop_size, paper.data.image_size,
          paper.train.batch_size, paper.stages.joint.lambda_seg,
          paper.optimizer.momentum, paper.optimizer.weight_decay,
          paper.stages.classification.lr,
          paper.stages.classification.decay_every) == (
              "50", 224, 256, 10, 7.5, 0.9, 5e-4, 1e-3, 2000)
  # The paper's protocol: reported on test, thresholds from validation.
  runlocal = module.get_config("runlocal")
  assert (runlocal.data.eval_split, runlocal.data.val_split,
          runlocal.rankopt.threshold_split) == ("test", "validation",
                                                "validation")
  assert module.get_config("three_class").data.task == "three_class"
  with pytest.raises(ValueError, match="unknown variant"):
    module.get_config("fast")


def _write_split_as_pngs(tiny_run, folder, split_name="test"):
  """The run's own split, as lossless files at the stored size."""
  from conftest import load_config
  from rapool_jax.data import pipeline
  import json
  workdir, _ = tiny_run
  config = load_config("tiny")
  with open(os.path.join(workdir, "config.json")) as f:
    config.data.data_dir = json.load(f)["data"]["data_dir"]
  split = pipeline.load_split(pipeline.make_builder(config.data), split_name,
                              "melanoma")
  os.makedirs(folder, exist_ok=True)
  for image_id, image in zip(split.ids, split.images):
    Image.fromarray(image).save(os.path.join(folder, f"{image_id}.png"))
  return split


def test_predict_stage_scores_equal_the_runs_own_predictions(tiny_run, tmp_path):
  workdir, _ = tiny_run
  split = _write_split_as_pngs(tiny_run, str(tmp_path / "images"))
  own = {name: {r["image"]: float(r["score"]) for r in _read_csv(
      os.path.join(workdir, "predictions", "test", f"{name}.csv"))}
         for name in ("step_2_gap", "step_4_region_pooling", "step_4_rankopt")}
  for stage, use_rankopt, name in (("classification", True, "step_2_gap"),
                                   ("", False, "step_4_region_pooling")):
    rows = predict.predict(workdir, str(tmp_path / "images"),
                           str(tmp_path / f"{name}.csv"), stage=stage,
                           use_rankopt=use_rankopt, batch_size=8)
    got = np.array([r["melanoma"] for r in rows])
    want = np.array([own[name][r["image"]] for r in rows])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # The default is the final model with RankOpt: its [0, 1] map of the scores.
  result, extra = rankopt.load(os.path.join(workdir, "rankopt.npz"))
  rows = predict.predict(workdir, str(tmp_path / "images"),
                         str(tmp_path / "final.csv"), batch_size=8)
  want = predict.rankopt_probability(
      np.array([own["step_4_rankopt"][r["image"]] for r in rows]),
      float(result.threshold), float(extra["score_scale"]))
  np.testing.assert_allclose([r["melanoma"] for r in rows], want, rtol=1e-4,
                             atol=1e-6)
  assert len(rows) == len(split)


def test_predict_unknown_stage_is_a_one_line_error(tiny_run, tmp_path):
  workdir, _ = tiny_run
  _write_images(str(tmp_path / "images"), [(32, 32)])
  with pytest.raises(Exception, match="--stage=nosuch: not a stage"):
    predict.predict(workdir, str(tmp_path / "images"), str(tmp_path / "p.csv"),
                    stage="nosuch")


def test_predict_refuses_a_workdir_being_written(tiny_run, tmp_path):
  from rapool_jax import checkpoint
  workdir, _ = tiny_run
  _write_images(str(tmp_path / "images"), [(32, 32)])
  with checkpoint.hold_workdir(workdir):
    proc = subprocess.run(
        [sys.executable, "-m", "rapool_jax.predict", "--workdir", workdir,
         "--images", str(tmp_path / "images"), "--out",
         str(tmp_path / "p.csv"), "--no-rankopt"],
        cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and f"{workdir} is being written" in lines[0], (
      proc.stderr)
  assert f"pid {os.getpid()}" in lines[0] and not os.path.exists(
      tmp_path / "p.csv")


def _write_images_and_masks(folder, masks_folder, n=3, size=32):
  """Synthetic images with their true masks, ISIC's mask names."""
  os.makedirs(folder, exist_ok=True)
  os.makedirs(masks_folder, exist_ok=True)
  ids = []
  for i in range(n):
    example = synthetic_derm.generate_example("test", i, image_size=size)
    image_id = f"ISIC_{9100000 + i:07d}"
    Image.fromarray(example["image"]).save(os.path.join(folder, f"{image_id}.png"))
    Image.fromarray(example["mask"][..., 0]).save(
        os.path.join(masks_folder, f"{image_id}_segmentation.png"))
    ids.append(image_id)
  return ids


def test_predict_with_masks_adds_cam_energy_and_disrupts(tiny_run, tmp_path):
  from rapool_jax import disrupt
  workdir, _ = tiny_run
  images, masks = str(tmp_path / "images"), str(tmp_path / "masks")
  ids = _write_images_and_masks(images, masks)
  plain = predict.predict(workdir, images, str(tmp_path / "p.csv"),
                          use_rankopt=False)
  whole = predict.predict(workdir, images, str(tmp_path / "w.csv"),
                          use_rankopt=False, masks_path=masks)
  assert list(_read_csv(tmp_path / "w.csv")[0]) == [
      "image", "melanoma", "cam_energy_inside"]
  # Masks change nothing but the added column (RAP pools over S, not the mask).
  np.testing.assert_allclose([r["melanoma"] for r in whole],
                             [r["melanoma"] for r in plain], rtol=1e-6)
  energy = np.array([r["cam_energy_inside"] for r in whole])
  assert np.all((energy >= 0) & (energy <= 1) | np.isnan(energy))
  # An image without its mask gets no energy, not a share of 0.
  os.remove(os.path.join(masks, f"{ids[0]}_segmentation.png"))
  some = predict.predict(workdir, images, str(tmp_path / "s.csv"),
                         use_rankopt=False, masks_path=masks)
  assert np.isnan(some[0]["cam_energy_inside"])
  np.testing.assert_allclose([r["cam_energy_inside"] for r in some[1:]],
                             energy[1:])
  # --disrupt scores exactly the disrupted image.
  _write_images_and_masks(images, masks)
  bg = predict.predict(workdir, images, str(tmp_path / "b.csv"),
                       use_rankopt=False, masks_path=masks,
                       disrupt="background_only")
  assert [r["image"] for r in bg] == ids
  by_hand = tmp_path / "by_hand"
  os.makedirs(by_hand)
  for image_id in ids:
    im = np.asarray(Image.open(os.path.join(images, f"{image_id}.png")))
    m = np.asarray(Image.open(os.path.join(masks, f"{image_id}_segmentation.png")))
    Image.fromarray(disrupt.disrupt(im[None], m[None] > 127,
                                    "background_only")[0]).save(
        by_hand / f"{image_id}.png")
  want = predict.predict(workdir, str(by_hand), str(tmp_path / "h.csv"),
                         use_rankopt=False)
  np.testing.assert_allclose([r["melanoma"] for r in bg],
                             [r["melanoma"] for r in want], rtol=1e-5)
  assert not np.allclose([r["melanoma"] for r in bg],
                         [r["melanoma"] for r in whole])


@pytest.mark.parametrize("case", ["no_mask", "other_size", "no_masks_flag"])
def test_predict_bad_masks_are_one_line_errors(tiny_run, tmp_path, case):
  workdir, _ = tiny_run
  images, masks = str(tmp_path / "images"), str(tmp_path / "masks")
  ids = _write_images_and_masks(images, masks, n=2)
  args = ["--masks", masks, "--disrupt", "bbox"]
  if case == "no_mask":
    os.remove(os.path.join(masks, f"{ids[1]}_segmentation.png"))
    want = f"{ids[1]}: no mask in --masks={masks}"
  elif case == "other_size":
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(
        os.path.join(masks, f"{ids[0]}_segmentation.png"))
    want = "mask is 30x20 but its image is 32x32"
  else:
    args, want = ["--disrupt", "bbox"], "--disrupt=bbox needs --masks DIR"
  proc = subprocess.run(
      [sys.executable, "-m", "rapool_jax.predict", "--workdir", workdir,
       "--images", images, "--out", str(tmp_path / "p.csv"), *args],
      cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and want in lines[0], proc.stderr
