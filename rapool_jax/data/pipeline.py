"""One input pipeline for every data set.

A split is loaded once from its TFDS builder (array_record, no TensorFlow) into
host arrays, then lives on the accelerator as uint8 and is augmented inside jit:
random crop, rotation and flips of image and mask with one sampling grid, then
normalisation. Which examples form step t's batch is a pure function of
``(seed, stage, t)``, so an interrupted run resumes on exactly the same batches.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from rapool_jax import errors
from rapool_jax.data import isic2017
from rapool_jax.data import synthetic_derm
from rapool_jax.data import trap


@dataclasses.dataclass(frozen=True)
class Split:
  """A split in host memory. ``images [N, S, S, 3]`` uint8, ``masks [N, S, S]``
  uint8 in {0, 1}, ``labels [N]`` int32, ``has_mask [N]`` bool, ``ids [N]`` str."""

  images: np.ndarray
  masks: np.ndarray
  labels: np.ndarray
  has_mask: np.ndarray
  ids: np.ndarray

  def __len__(self):
    return len(self.labels)

  def take(self, rows) -> Split:
    """The rows ``rows`` of every field."""
    return Split(**{k: v[rows] for k, v in vars(self).items()})


def make_builder(data_config, require_train_masks: bool = True):
  """Builds (once) and returns the TFDS builder named by ``config.data.name``."""
  data_dir = data_config.data_dir or os.path.expanduser("~/tensorflow_datasets")
  if data_config.name == "synthetic_derm":
    builder = synthetic_derm.make_builder(
        data_dir, image_size=data_config.image_size,
        num_train=data_config.num_train,
        num_validation=data_config.num_validation,
        num_test=data_config.num_test)
    builder.download_and_prepare()
    return builder
  errors.check_choice("config.data.name", data_config.name, DATA_SETS)
  if not data_config.manual_dir:
    raise errors.UserError(
        "config.data.manual_dir is empty: set "
        "--config.data.manual_dir=PATH to the folder holding the "
        "official ISIC 2017 zips or folders")
  try:
    builder = isic2017.prepare(data_dir, data_config.manual_dir,
                               image_size=data_config.image_size,
                               require_train_masks=require_train_masks)
  except isic2017.MissingMasksError as e:
    # The library's hint names a Python argument; say what the config sets.
    where = str(e).split(": ", 1)[0]
    raise isic2017.MissingMasksError(
        f"{where}: training masks not found, and a stage with lambda_seg > 0 "
        f"trains on them; add {isic2017.masks_name('train')}.zip to "
        f"{data_config.manual_dir}, or pass --config.stages.NAME.lambda_seg=0 "
        "for each such stage") from None
  check_split_names(builder, data_config)
  return builder


SPLIT_ROLES = ("train_split", "val_split", "eval_split")
# Derived by data/folds.py from crossval.source_splits, not stored.
CV_SPLITS = ("cv_train", "cv_val", "cv_test")


def check_split_names(builder, data_config) -> None:
  """Raises ValueError naming the config key whose split was not built, and
  the files that would build it (ISIC 2017) or the splits there are."""
  have = sorted(builder.info.splits)
  wanted = [(f"config.data.{r}", data_config[r]) for r in SPLIT_ROLES
            if data_config[r] and data_config[r] not in CV_SPLITS]
  wanted += [("config.data.report_splits", s)
             for s in data_config.get("report_splits", ())
             if s not in CV_SPLITS]
  if any(data_config[r] in CV_SPLITS for r in SPLIT_ROLES):
    wanted += [("config.data.crossval.source_splits", s)
               for s in data_config.crossval.source_splits]
  for key, split in wanted:
    if split in have:
      continue
    fix = ""
    if builder.name == "isic2017" and split in ("train", "validation", "test"):
      fix = (f"add {', '.join(isic2017.expected_files(split))} to "
             f"{data_config.manual_dir} (the data set is then rebuilt), or ")
    raise errors.UserError(
        f"{key}={split!r}: the {builder.name} data set at {builder.data_dir} "
        f"has no such split (it has {have}); {fix}pass "
        f"--{key}=NAME with a split it has")


TASKS = {"melanoma": 2, "three_class": 3}  # task -> number of classes
DATA_SETS = ("synthetic_derm", "isic2017")


def num_classes(task: str) -> int:
  """The one place the head's size is derived from ``config.data.task``."""
  errors.check_choice("config.data.task", task, tuple(TASKS))
  return TASKS[task]


def check_data_settings(data_config) -> None:
  """``config.data``'s values in their ranges, before anything is built."""
  errors.check_choice("config.data.name", data_config.name, DATA_SETS)
  num_classes(data_config.task)
  errors.check_range("config.data.image_size", data_config.image_size, low=1)
  errors.check_range("config.data.crop_size", data_config.crop_size, low=1)
  if data_config.crop_size > data_config.image_size:
    raise errors.UserError(
        f"config.data.crop_size={data_config.crop_size} is larger "
        f"than config.data.image_size={data_config.image_size}")
  errors.check_range("config.data.rotate_degrees", data_config.rotate_degrees,
                     low=0, high=180)
  errors.check_range("config.data.device_memory_budget_mb",
                     data_config.device_memory_budget_mb, low=0)
  for key in ("mean", "std"):
    if len(data_config[key]) != 3:
      raise errors.UserError(f"config.data.{key}={tuple(data_config[key])}: "
                             "expected 3 values (R, G, B)")
  for value in data_config.std:
    errors.check_range("config.data.std", value, low=0, low_open=True)
  trap.check_settings(data_config)
  if data_config.name == "synthetic_derm":
    for key in ("num_train", "num_validation", "num_test"):
      errors.check_range(f"config.data.{key}", data_config[key], low=1)


def load_split(builder, split: str, task: str) -> Split:
  """Reads a whole split into host arrays, sorted by image id. Labels: task
  "melanoma" -> {0 rest, 1 melanoma}; "three_class" -> {0 nevus, 1 melanoma,
  2 seborrheic keratosis}."""
  if split not in builder.info.splits:
    raise errors.UserError(
        f"split {split!r} is not in data set {builder.name!r} "
        f"(has {sorted(builder.info.splits)})")
  source = builder.as_data_source(split=split)
  examples = sorted((source[i] for i in range(len(source))),
                    key=lambda e: _text(e["image_id"]))
  field = lambda key: np.stack([e[key] for e in examples])  # noqa: E731
  labels = field("melanoma").astype(np.int32)
  if num_classes(task) == 3:
    labels = np.where(labels == 1, 1, np.where(
        field("seborrheic_keratosis") == 1, 2, 0)).astype(np.int32)
  return Split(images=field("image").astype(np.uint8),
               masks=(field("mask")[..., 0] > 127).astype(np.uint8),
               labels=labels, has_mask=field("has_mask").astype(bool),
               ids=np.array([_text(e["image_id"]) for e in examples]))


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def batch_indices(seed: int, stage_index: int, step: int, batch_size: int,
                  num_examples: int) -> np.ndarray:
  """Indices of step ``step``'s batch: epochs of seeded permutations, concatenated."""
  start = step * batch_size
  out = []
  while len(out) < batch_size:
    epoch, offset = divmod(start + len(out), num_examples)
    perm = np.random.default_rng([seed, stage_index, epoch]).permutation(
        num_examples)
    out.extend(perm[offset:offset + batch_size - len(out)].tolist())
  return np.asarray(out, np.int32)


def normalize(images, mean, std):
  """uint8 or [0, 255] float ``[..., 3]`` -> normalised float32."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


# The sampling grid is fixed point: cos and sin are integers over 2**14 and
# positions are doubled (an even crop's centre falls between pixels), so a
# coordinate is an int32 in units of 2**-15 px. XLA recomputes the grid in
# every fusion that reads it, sometimes with FMA contraction and sometimes
# without; in float32 a pixel's floor and its interpolation weight could then
# come from different roundings, and the pixel takes its neighbour's value.
# Integer arithmetic gives every fusion the same grid. The quantised angle
# moves a 224-px crop's corners by less than 0.01 px.
_TRIG_BITS = 14
GRID_FRACTION_BITS = _TRIG_BITS + 1
# Pixels of a split that one int32 index can address.
_FLAT_INDEX_LIMIT = 2 ** 31


def augment_params(key, image_size: int, crop_size: int,
                   rotate_degrees: float, flip: bool):
  """One example's random view: crop ``offset [2]`` int32 (row, col), rotation
  ``angle`` (radians) and ``flips [2]`` bool (rows, cols)."""
  k_crop, k_rot, k_flip = jax.random.split(key, 3)
  offset = jax.random.randint(k_crop, (2,), 0, image_size - crop_size + 1)
  angle = jnp.deg2rad(jax.random.uniform(k_rot, (), minval=-rotate_degrees,
                                         maxval=rotate_degrees))
  flips = (jax.random.bernoulli(k_flip, 0.5, (2,)) if flip
           else jnp.zeros((2,), bool))
  return offset.astype(jnp.int32), angle, flips


def sampling_grid(offset, angle, flips, crop_size: int):
  """Source coordinates of a ``[crop, crop]`` view, rotated about the crop's
  centre: int32 ``rows, cols [crop, crop]`` in units of
  ``2**-GRID_FRACTION_BITS`` px."""
  doubled = 2 * jnp.arange(crop_size, dtype=jnp.int32) - (crop_size - 1)
  rr = jnp.where(flips[0], -doubled, doubled)[:, None]
  cc = jnp.where(flips[1], -doubled, doubled)[None, :]
  one = 2 ** _TRIG_BITS
  cos = jnp.round(jnp.cos(angle) * one).astype(jnp.int32)
  sin = jnp.round(jnp.sin(angle) * one).astype(jnp.int32)
  centre = (2 * offset.astype(jnp.int32) + (crop_size - 1)) * one
  return cos * rr - sin * cc + centre[0], sin * rr + cos * cc + centre[1]


def _gatherer(images, masks, source_rows):
  """``gather(idx [B, h, w])`` -> (image taps ``[B, h, w, C]``, mask taps
  ``[B, h, w]``) at flat pixel index ``idx`` of each view's source example."""
  n, size = images.shape[:2]
  channels = images.shape[-1]
  if source_rows is not None and n * size * size < _FLAT_INDEX_LIMIT:
    # One flat index into the whole (replicated) split: XLA fuses the index
    # arithmetic into the gather and never stores an index array, which a
    # gather with a batch dimension makes it do (2 GB per step at batch 256
    # on the H200's program, benchmarks/README.md).
    flat_images = images.reshape(n * size * size, channels)
    flat_masks = masks.reshape(n * size * size)
    base = (source_rows.astype(jnp.int32) * (size * size))[:, None, None]
    return lambda idx: (
        flat_images.at[base + idx].get(mode="promise_in_bounds"),
        flat_masks.at[base + idx].get(mode="promise_in_bounds"))
  # The batch itself, perhaps sharded over devices: a batched gather keeps
  # each device's reads local.
  if source_rows is not None:
    images, masks = images[source_rows], masks[source_rows]
  b = images.shape[0]
  flat_images = images.reshape(b, size * size, channels)
  flat_masks = masks.reshape(b, size * size)
  return lambda idx: jax.vmap(
      lambda im, m, i: (im.at[i].get(mode="promise_in_bounds"),
                        m.at[i].get(mode="promise_in_bounds")))(
                            flat_images, flat_masks, idx)


def sample_bilinear(images, masks, rows, cols, source_rows=None):
  """Bilinear, edge-clamped sampling of images and masks on a fixed-point grid.

  Args:
    images: ``[N, S, S, C]``, masks ``[N, S, S]`` (any real dtype).
    rows, cols: int32 ``[B, h, w]`` from ``sampling_grid``.
    source_rows: ``[B]`` int32, which of the N examples each view reads
      (default: view b reads example b, and B = N).
  Returns:
    float32 ``[B, h, w, C]`` and ``[B, h, w]``.
  """
  size = images.shape[1]
  shift = GRID_FRACTION_BITS
  r0, c0 = rows >> shift, cols >> shift          # floor, also below zero
  wr = (rows & (2 ** shift - 1)).astype(jnp.float32) * 2.0 ** -shift
  wc = (cols & (2 ** shift - 1)).astype(jnp.float32) * 2.0 ** -shift
  gather = _gatherer(images, masks, source_rows)
  out_images = out_masks = 0.0
  for dr, w_r in ((0, 1.0 - wr), (1, wr)):
    for dc, w_c in ((0, 1.0 - wc), (1, wc)):
      r = jnp.clip(r0 + dr, 0, size - 1)
      c = jnp.clip(c0 + dc, 0, size - 1)
      tap_images, tap_masks = gather(r * size + c)
      weight = w_r * w_c
      out_images = out_images + tap_images.astype(jnp.float32) * weight[..., None]
      out_masks = out_masks + tap_masks.astype(jnp.float32) * weight
  return out_images, out_masks


def augment_batch(key, images, masks, crop_size: int, rotate_degrees: float,
                  flip: bool, rows=None):
  """Random crop + rotation + flips, each mask transformed with its image.

  Args:
    key: PRNG key.
    images: ``[N, S, S, 3]`` uint8.  masks: ``[N, S, S]`` uint8 in {0, 1}.
    rows: ``[B]`` int32, the examples to augment (default: all, B = N). Pass
      the whole device-resident split with ``rows`` rather than
      ``images[rows]``: the gather then reads the split directly.
  Returns:
    images ``[B, crop, crop, 3]`` float32 in [0, 255], masks
    ``[B, crop, crop]`` uint8 in {0, 1}.
  """
  size = images.shape[1]
  if images.shape[2] != size or masks.shape[1:] != images.shape[1:3]:
    raise ValueError(f"augment_batch: images {images.shape} and masks "
                     f"{masks.shape} must be square and of one size")
  if 2 ** GRID_FRACTION_BITS * (size + crop_size) >= 2 ** 31:
    raise ValueError(f"augment_batch: image size {size} + crop {crop_size} "
                     f"overflows the int32 sampling grid")
  batch = images.shape[0] if rows is None else rows.shape[0]
  keys = jax.random.split(key, batch)
  offset, angle, flips = jax.vmap(
      lambda k: augment_params(k, size, crop_size, rotate_degrees, flip))(keys)
  grid_rows, grid_cols = jax.vmap(
      lambda o, a, f: sampling_grid(o, a, f, crop_size))(offset, angle, flips)
  out_images, out_masks = sample_bilinear(images, masks, grid_rows, grid_cols,
                                          source_rows=rows)
  return out_images, (out_masks >= 0.5).astype(jnp.uint8)


def center_crop(x, crop_size: int):
  """The evaluation view: centre crop of images ``[B, S, S, 3]`` or masks
  ``[B, S, S]`` to ``[B, crop, crop, ...]``."""
  lo = (x.shape[1] - crop_size) // 2
  return x[:, lo:lo + crop_size, lo:lo + crop_size]
