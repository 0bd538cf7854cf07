r"""Inference with a finished run: challenge-format CSV and lesion masks.

    python -m rapool_jax.predict --workdir DIR --images PATH --out preds.csv \
        [--masks-out MASKDIR] [--stage NAME] [--norankopt] \
        [--masks DIR [--disrupt lesion_only|background_only|bbox]]

``PATH`` is a folder or a zip of images of any size, preprocessed as in
training (squashed to ``data.image_size``, centre crop for classification).
The CSV (``image``, a probability per class) and the masks (0/255 PNGs at each
image's size) are the ISIC challenge's; where the run fitted RankOpt, the
melanoma column is its score mapped monotonically to [0, 1], the threshold at
0.5 (AUC unchanged).
With ``--masks DIR`` (true lesion masks, ``<image id>_segmentation.png`` as
ISIC's ground truth or ``<image id>.png``, each the size of its image) the CSV
gains ``cam_energy_inside``: the share of the melanoma CAM's positive energy
inside the mask (``metrics.cam_energy_inside``); ``--disrupt`` scores the
image with its lesion or background taken away first (``disrupt.py``).
A workdir that a run is writing (it holds ``writer.lock``) is refused: its
checkpoints, ``config.json`` and ``rankopt.npz`` may change under the reader.
"""

from __future__ import annotations

import csv
import io
import os
import re
import sys
import zipfile

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from rapool_jax import checkpoint as ckpt_lib
from rapool_jax import checks
from rapool_jax import disrupt as disrupt_lib
from rapool_jax import errors
from rapool_jax import metrics
from rapool_jax import rankopt
from rapool_jax import report
from rapool_jax.data import pipeline
from rapool_jax.models import rapool_net

_IMAGE = re.compile(r"(?i)^(?!\._)(.+?)\.(jpe?g|png)$")
_NOT_IMAGES = ("_superpixels", "_segmentation")


def list_images(path: str) -> list[tuple[str, str]]:
  """(image id, member) pairs from a folder or zip, sorted by id."""
  if not os.path.exists(path):
    raise errors.UserError(f"{path}: no such folder or zip of images")
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as zf:
      names = [n for n in zf.namelist() if not n.endswith("/")]
  elif os.path.isdir(path):
    names = [os.path.relpath(os.path.join(root, f), path)
             for root, _, files in os.walk(path) for f in files]
  elif path.lower().endswith(".zip") or _starts_like_zip(path):
    try:
      zipfile.ZipFile(path).close()
    except (zipfile.BadZipFile, OSError) as e:
      raise errors.UserError(f"{path}: truncated or corrupt zip "
                             f"({errors.one_line(e)}); copy or download it "
                             "again") from None
  else:
    raise errors.UserError(f"{path}: not a folder or a zip file")
  found = []
  for name in names:
    m = _IMAGE.match(os.path.basename(name))
    if m and "__MACOSX" not in name and not m.group(1).endswith(_NOT_IMAGES):
      found.append((m.group(1), name))
  if not found:
    raise errors.UserError(f"{path}: no .jpg/.jpeg/.png images found")
  return sorted(found)


def _starts_like_zip(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(4) == b"PK\x03\x04"


def read_image(path: str, member: str) -> Image.Image:
  """Decodes one image as RGB; a corrupt file is a one-line error naming it."""
  in_zip = zipfile.is_zipfile(path)
  where = f"{path}:{member}" if in_zip else os.path.join(path, member)
  try:
    if in_zip:
      with zipfile.ZipFile(path) as zf:
        data = zf.read(member)
    else:
      with open(where, "rb") as f:
        data = f.read()
    return Image.open(io.BytesIO(data)).convert("RGB")  # convert loads it
  except (OSError, SyntaxError, ValueError) as e:
    raise errors.UserError(f"{where}: unreadable or corrupt image ({e})") from None


def load_run(workdir: str, stage: str = "", use_rankopt: bool = True):
  """Config, model, variables, pooling and (if fitted and used) RankOpt of a
  finished run's ``stage`` ("" = the final model: RankOpt's stage when it is
  enabled, else the last stage). RankOpt applies only to its own stage."""
  ckpt_lib.check_not_being_written(workdir)
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise errors.UserError(f"{config_path}: not found; is {workdir} the "
                           "--workdir of a run of rapool_jax.main?")
  config = ml_collections.ConfigDict(
      checks.read_json_object(config_path, "a run's config"))
  config.model.num_classes = pipeline.num_classes(config.data.task)
  model = rapool_net.build_model(config.model)
  crop = config.data.crop_size
  target = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, crop, crop, 3)), train=False))
  target = {"params": target["params"],
            "batch_stats": target.get("batch_stats", {})}
  final = (config.rankopt.after_stage if config.rankopt.enabled
           else config.stage_order[-1])
  stage = stage or final
  if stage not in config.stage_order:
    raise errors.UserError(f"--stage={stage}: not a stage of the run in "
                           f"{workdir} (stages: {', '.join(config.stage_order)})")
  variables = ckpt_lib.restore_variables(workdir, stage, target)
  if variables is None:
    raise errors.UserError(f"{ckpt_lib.stage_dir(workdir, stage)}: stage "
                           f"{stage!r} has not finished; run the main job first")
  fitted = None
  rankopt_path = os.path.join(workdir, "rankopt.npz")
  if (use_rankopt and config.rankopt.enabled
      and stage == config.rankopt.after_stage
      and os.path.exists(rankopt_path)):
    fitted = rankopt.load(rankopt_path)
  return config, model, variables, config.stages[stage].pooling, fitted


def rankopt_probability(scores, threshold: float, scale: float) -> np.ndarray:
  """Monotone map of RankOpt scores to [0, 1]; the threshold maps to 0.5."""
  return 1.0 / (1.0 + np.exp(-(np.asarray(scores) - threshold) / scale))


def list_masks(path: str) -> dict[str, str]:
  """``{image id: file}`` of the masks in folder ``path``."""
  if not os.path.isdir(path):
    raise errors.UserError(f"--masks={path}: no such folder of masks")
  found = {}
  for name in sorted(os.listdir(path)):
    m = _IMAGE.match(name)
    if m:
      found[m.group(1).removesuffix("_segmentation")] = name
  return found


def read_mask(path: str, name: str, image: Image.Image, size: int):
  """``[size, size]`` uint8 0/1 mask resized as its ``image`` is; a mask of
  another size than its image is a one-line error naming it."""
  where = os.path.join(path, name)
  try:
    mask = Image.open(where).convert("L")
  except (OSError, SyntaxError, ValueError) as e:
    raise errors.UserError(f"{where}: unreadable or corrupt mask ({e})") from None
  if mask.size != image.size:
    raise errors.UserError(f"{where}: mask is {mask.size[0]}x{mask.size[1]} "
                           f"but its image is {image.size[0]}x{image.size[1]}")
  return (np.asarray(mask.resize((size, size), Image.NEAREST)) > 127).astype(
      np.uint8)


def forward_fn(config, model, variables, pooling):
  """A jitted ``[B, S, S, 3]`` uint8 images and ``[B, S, S]`` masks (S =
  ``data.image_size``) -> class probabilities ``[B, K]``, pooled features
  and the melanoma CAM ``[B, h, w]`` of the centre crop, and the ``[B, S, S]``
  0/1 predicted lesion mask of the whole image."""
  size, crop = config.data.image_size, config.data.crop_size
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  lo = (size - crop) // 2

  @jax.jit
  def forward(images, masks):
    x = pipeline.normalize(images, mean, std)
    m = masks[:, lo:lo + crop, lo:lo + crop]
    cls = model.apply(variables, x[:, lo:lo + crop, lo:lo + crop], train=False,
                      pooling=pooling, mask=m)
    cam = report.cam_of_outputs(cls, variables, pooling, 1, m)
    seg = model.apply(variables, x, train=False, pooling=pooling)
    return (jax.nn.softmax(cls["logits"], -1), cls["pooled"], cam,
            jnp.argmax(seg["seg_logits"], -1))

  return forward


def read_batch(images_path: str, chunk, size: int, batch_size: int,
               masks_path: str | None, masks: dict, disrupt: str):
  """``(originals, images [B, S, S, 3], masks [B, S, S])`` of ``chunk``'s
  images, padded to ``batch_size`` (one compiled shape), disrupted."""
  originals = [read_image(images_path, member) for _, member in chunk]
  images = np.zeros((batch_size, size, size, 3), np.uint8)
  images[:len(chunk)] = [np.asarray(im.resize((size, size), Image.BICUBIC))
                         for im in originals]
  mask_batch = np.zeros((batch_size, size, size), np.uint8)
  for i, (image_id, _) in enumerate(chunk):
    if image_id in masks:
      mask_batch[i] = read_mask(masks_path, masks[image_id], originals[i],
                                size)
    elif disrupt != "whole":
      raise errors.UserError(f"{image_id}: no mask in --masks={masks_path} "
                             f"(--disrupt={disrupt} needs one per image)")
  if disrupt != "whole":
    images[:len(chunk)] = disrupt_lib.disrupt(
        images[:len(chunk)], mask_batch[:len(chunk)], disrupt)
  return originals, images, mask_batch


def predict(workdir: str, images_path: str, out_csv: str,
            masks_out: str | None = None, batch_size: int = 16,
            stage: str = "", use_rankopt: bool = True,
            masks_path: str | None = None, disrupt: str = "whole") -> list[dict]:
  """Writes the CSV (and masks) of ``stage``'s model ("" = the final one;
  ``use_rankopt=False``: its softmax, not RankOpt); returns the rows."""
  disrupt_lib.check_version(disrupt, masks_path)
  config, model, variables, pooling, fitted = load_run(workdir, stage,
                                                       use_rankopt)
  forward = forward_fn(config, model, variables, pooling)
  entries = list_images(images_path)
  masks = list_masks(masks_path) if masks_path else {}
  rows = []
  for lo in range(0, len(entries), batch_size):
    chunk = entries[lo:lo + batch_size]
    originals, images, mask_batch = read_batch(
        images_path, chunk, config.data.image_size, batch_size, masks_path,
        masks, disrupt)
    out = forward(jnp.asarray(images), jnp.asarray(mask_batch))
    probs, pooled, cam, seg = (np.asarray(a)[:len(chunk)] for a in out)
    inside = None
    if masks:  # NaN, not 0, for an image that has no mask to measure against
      inside = metrics.cam_energy_inside(
          cam, report_crop(mask_batch[:len(chunk)], config.data))
      inside[[image_id not in masks for image_id, _ in chunk]] = np.nan
    rows += score_rows(chunk, probs, pooled, fitted, config.data.task, inside)
    if masks_out:
      save_masks(masks_out, chunk, seg, originals)
    print(f"predicted {min(lo + batch_size, len(entries))}/{len(entries)}",
          flush=True)
  write_csv(out_csv, rows, config.data.task, with_cam=bool(masks))
  return rows


def score_arrays(workdir: str, stage: str, images, masks,
                 batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """``(melanoma [N], cam_energy_inside [N])``: ``stage``'s softmax and CAM
  energy on ``images [N, S, S, 3]`` uint8 and ``masks [N, S, S]`` at the
  run's stored size, centre-cropped as in its evaluation."""
  config, model, variables, pooling, _ = load_run(workdir, stage, False)
  forward = forward_fn(config, model, variables, pooling)
  scores, inside = [], []
  for lo in range(0, len(images), batch_size):
    n = len(images[lo:lo + batch_size])
    x, m = (np.concatenate([a[lo:lo + n], np.zeros(
        (batch_size - n,) + a.shape[1:], a.dtype)]) for a in (images, masks))
    probs, _, cam, _ = forward(jnp.asarray(x), jnp.asarray(m))
    scores.append(np.asarray(probs)[:n, 1])
    inside.append(metrics.cam_energy_inside(
        np.asarray(cam)[:n], report_crop(m[:n], config.data)))
  return np.concatenate(scores), np.concatenate(inside)


def report_crop(masks, data) -> np.ndarray:
  """The centre crop that the classifier (and so the CAM) sees."""
  return np.asarray(pipeline.center_crop(masks, data.crop_size))


def score_rows(chunk, probs, pooled, fitted, task: str, cam_inside) -> list:
  """One CSV row per image: the melanoma score (RankOpt's where fitted)."""
  melanoma = probs[:, 1]
  if fitted is not None:
    result, extra = fitted
    melanoma = rankopt_probability(rankopt.decision_function(result, pooled),
                                   float(result.threshold),
                                   float(extra["score_scale"]))
  rows = []
  for i, (image_id, _) in enumerate(chunk):
    row = {"image": image_id, "melanoma": float(melanoma[i])}
    if task == "three_class":
      row["seborrheic_keratosis"] = float(probs[i, 2])
    if cam_inside is not None:
      row["cam_energy_inside"] = float(cam_inside[i])
    rows.append(row)
  return rows


def save_masks(masks_out: str, chunk, seg, originals) -> None:
  """0/255 PNGs of the predicted lesion, each at its image's size."""
  os.makedirs(masks_out, exist_ok=True)
  for i, (image_id, _) in enumerate(chunk):
    mask = Image.fromarray((seg[i] * 255).astype(np.uint8))
    mask.resize(originals[i].size, Image.NEAREST).save(
        os.path.join(masks_out, f"{image_id}_segmentation.png"))


def write_csv(out_csv: str, rows: list[dict], task: str,
              with_cam: bool = False) -> None:
  """The challenge CSV: ``image``, ``melanoma`` (and ``seborrheic_keratosis``;
  ``cam_energy_inside`` with masks)."""
  columns = ["image", "melanoma"] + (
      ["seborrheic_keratosis"] if task == "three_class" else []) + (
          ["cam_energy_inside"] if with_cam else [])
  os.makedirs(os.path.dirname(os.path.abspath(out_csv)), exist_ok=True)
  with open(out_csv, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)


FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Workdir of a finished main-job run.")
flags.DEFINE_string("images", None, "Folder or zip of images.")
flags.DEFINE_string("out", None, "Output CSV path.")
flags.DEFINE_string("masks-out", None, "Folder for lesion mask PNGs.")
flags.DEFINE_integer("batch_size", 16, "Images per forward pass.")
flags.DEFINE_string("masks", None, "Folder of true lesion masks "
                    "(<id>_segmentation.png or <id>.png): adds the column "
                    "cam_energy_inside.")
flags.DEFINE_enum("disrupt", "whole", disrupt_lib.VERSIONS,
                  "Score each image with its lesion or background taken "
                  "away (needs --masks).")
flags.DEFINE_string("stage", "", "Score with this stage's model, e.g. "
                    "'classification' (Step 2, GAP); default: the final model.")
flags.DEFINE_bool("rankopt", True, "Use the run's RankOpt scores where it has "
                  "them; --norankopt (or --no-rankopt) gives the network's "
                  "softmax.")
# A spelling absl does not know, as other tools (argparse's
# BooleanOptionalAction) and earlier versions of the README write it.
ALIASES = {"--no-rankopt": "--norankopt"}


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing that also takes ``ALIASES``; a bad flag is one line."""
  argv = [ALIASES.get(a, a) for a in argv]
  with errors.one_line_errors():
    try:
      rest = FLAGS(argv)
    except flags.Error as e:
      raise errors.UserError(f"command line: {errors.one_line(e)}") from None
    if len(rest) > 1:
      raise errors.UserError(f"unexpected arguments: {rest[1:]}")
  return rest


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  with errors.one_line_errors():
    missing = [f"--{n}" for n in ("workdir", "images", "out")
               if not getattr(FLAGS, n)]
    if missing:
      raise errors.UserError(f"missing required flag(s): {' '.join(missing)}")
    predict(FLAGS.workdir, FLAGS.images, FLAGS.out, FLAGS["masks-out"].value,
            FLAGS.batch_size, stage=FLAGS.stage, use_rankopt=FLAGS.rankopt,
            masks_path=FLAGS.masks, disrupt=FLAGS.disrupt)
    print(f"wrote {FLAGS.out}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
