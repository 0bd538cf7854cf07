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


def _data_dir(data_config) -> str:
  return data_config.data_dir or os.path.expanduser("~/tensorflow_datasets")


def make_builder(data_config, require_train_masks: bool = True):
  """Builds (once) and returns the TFDS builder named by ``config.data.name``."""
  if data_config.name == "synthetic_derm":
    from rapool_jax.data import synthetic_derm
    builder = synthetic_derm.make_builder(
        _data_dir(data_config), image_size=data_config.image_size,
        num_train=data_config.num_train,
        num_validation=data_config.num_validation,
        num_test=data_config.num_test)
    builder.download_and_prepare()
    return builder
  if data_config.name == "isic2017":
    from rapool_jax.data import isic2017
    if not data_config.manual_dir:
      raise ValueError("config.data.manual_dir is empty: set "
                       "--config.data.manual_dir=PATH to the folder holding the "
                       "official ISIC 2017 zips or folders")
    return isic2017.prepare(_data_dir(data_config), data_config.manual_dir,
                            image_size=data_config.image_size,
                            require_train_masks=require_train_masks)
  raise ValueError(f"config.data.name={data_config.name!r} is not a known data "
                   "set; choose 'synthetic_derm' or 'isic2017'")


def task_labels(melanoma, seborrheic_keratosis, task: str) -> np.ndarray:
  """Class index per example: "melanoma" -> {0 rest, 1 melanoma};
  "three_class" -> {0 nevus, 1 melanoma, 2 seborrheic keratosis}."""
  melanoma = np.asarray(melanoma, np.int32)
  if task == "melanoma":
    return melanoma
  if task == "three_class":
    return np.where(melanoma == 1, 1,
                    np.where(np.asarray(seborrheic_keratosis) == 1, 2, 0)
                    ).astype(np.int32)
  raise ValueError(f"config.data.task={task!r}: choose 'melanoma' or "
                   "'three_class'")


def num_classes(task: str) -> int:
  return {"melanoma": 2, "three_class": 3}[task]


def load_split(builder, split: str, task: str) -> Split:
  """Reads a whole split into host arrays, sorted by image id."""
  if split not in builder.info.splits:
    raise ValueError(f"split {split!r} is not in data set {builder.name!r} "
                     f"(has {sorted(builder.info.splits)})")
  source = builder.as_data_source(split=split)
  examples = [source[i] for i in range(len(source))]
  examples.sort(key=lambda e: _text(e["image_id"]))
  images = np.stack([e["image"] for e in examples]).astype(np.uint8)
  masks = (np.stack([e["mask"][..., 0] for e in examples]) > 127).astype(np.uint8)
  return Split(
      images=images, masks=masks,
      labels=task_labels([e["melanoma"] for e in examples],
                         [e["seborrheic_keratosis"] for e in examples], task),
      has_mask=np.array([bool(e["has_mask"]) for e in examples]),
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


def _sample(image, rows, cols):
  """Bilinear sampling of ``image [S, S, C]`` at float coords ``[h, w]``, edge-clamped."""
  coords = jnp.stack([rows, cols])
  return jax.vmap(
      lambda ch: jax.scipy.ndimage.map_coordinates(ch, coords, order=1,
                                                   mode="nearest"),
      in_axes=-1, out_axes=-1)(image)


def augment_one(key, image, mask, crop_size: int, rotate_degrees: float,
                flip: bool):
  """Random crop + rotation + flips of one example, mask transformed identically.

  Args:
    key: PRNG key.
    image: ``[S, S, 3]`` uint8.  mask: ``[S, S]`` uint8 in {0, 1}.
  Returns:
    image ``[crop, crop, 3]`` float32 in [0, 255], mask ``[crop, crop]`` {0, 1}.
  """
  size = image.shape[0]
  k_crop, k_rot, k_flip = jax.random.split(key, 3)
  margin = size - crop_size
  offset = jax.random.randint(k_crop, (2,), 0, margin + 1).astype(jnp.float32)
  angle = jnp.deg2rad(jax.random.uniform(k_rot, (), minval=-rotate_degrees,
                                         maxval=rotate_degrees))
  flips = (jax.random.bernoulli(k_flip, 0.5, (2,)) if flip
           else jnp.zeros((2,), bool))
  # Output pixel grid, centred on the crop; rotate about the crop centre.
  r = jnp.arange(crop_size, dtype=jnp.float32) - (crop_size - 1) / 2
  rr, cc = jnp.meshgrid(r, r, indexing="ij")
  rr = jnp.where(flips[0], -rr, rr)
  cc = jnp.where(flips[1], -cc, cc)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  center = offset + (crop_size - 1) / 2
  rows = cos * rr - sin * cc + center[0]
  cols = sin * rr + cos * cc + center[1]
  out_image = _sample(image.astype(jnp.float32), rows, cols)
  out_mask = _sample(mask.astype(jnp.float32)[..., None], rows, cols)[..., 0]
  return out_image, (out_mask >= 0.5).astype(jnp.uint8)


def augment_batch(key, images, masks, crop_size: int, rotate_degrees: float,
                  flip: bool):
  """vmapped ``augment_one``: ``[B, S, S, 3]`` -> ``[B, crop, crop, 3]``."""
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(augment_one, in_axes=(0, 0, 0, None, None, None))(
      keys, images, masks, crop_size, rotate_degrees, flip)


def center_crop_masks(masks, crop_size: int):
  """Centre crop of ``[B, S, S, ...]`` to ``[B, crop, crop, ...]``."""
  lo = (masks.shape[1] - crop_size) // 2
  return masks[:, lo:lo + crop_size, lo:lo + crop_size]


def center_crop(images, masks, crop_size: int):
  """Evaluation view: centre crop of images ``[B, S, S, 3]`` and masks ``[B, S, S]``."""
  return center_crop_masks(images, crop_size), center_crop_masks(masks, crop_size)
