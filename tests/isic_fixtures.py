"""Tiny fake ISIC 2017 files in the official layout, for tests.

Each fake image is a light skin-coloured background with a dark elliptical
lesion; its mask is that ellipse (0/255), so a correct build keeps the lesion
darker than the background inside the stored mask.
"""

from __future__ import annotations

import dataclasses
import io
import os
import zipfile

import numpy as np
from PIL import Image


@dataclasses.dataclass
class FakeImage:
  image_id: str
  size: tuple[int, int]  # (W, H), as PIL.
  melanoma: int = 0
  seborrheic_keratosis: int = 0
  age: str = "55"
  sex: str = "female"


def default_images(first: int = 0) -> list[FakeImage]:
  """Four images of different sizes and aspects, one of each label kind."""
  return [
      FakeImage(f"ISIC_{first:07d}", (40, 30), melanoma=1, age="70",
                sex="male"),
      FakeImage(f"ISIC_{first + 1:07d}", (30, 44), seborrheic_keratosis=1),
      FakeImage(f"ISIC_{first + 2:07d}", (64, 48), age="unknown",
                sex="unknown"),
      FakeImage(f"ISIC_{first + 3:07d}", (25, 25)),
  ]


def lesion(size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
  """``(rgb [H, W, 3] uint8, mask [H, W] uint8 0/255)`` for a (W, H) size."""
  w, h = size
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w]
  cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
  inside = ((yy - cy) / (0.3 * h)) ** 2 + ((xx - cx) / (0.3 * w)) ** 2 < 1
  rgb = np.empty((h, w, 3), np.uint8)
  rgb[...] = (220, 180, 160)
  rgb[inside] = (80, 50, 40)
  return rgb, np.where(inside, 255, 0).astype(np.uint8)


def encode(array: np.ndarray, fmt: str) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format=fmt)
  return buf.getvalue()


@dataclasses.dataclass
class SplitFiles:
  """One split's files. ``data``/``masks``: member path -> bytes."""

  folder: str  # 'Training', 'Validation' or 'Test_v2'.
  data: dict[str, bytes]
  masks: dict[str, bytes]
  labels: str  # Part3 CSV text.

  @property
  def data_stem(self) -> str:
    return f"ISIC-2017_{self.folder}_Data"

  @property
  def masks_stem(self) -> str:
    return f"ISIC-2017_{self.folder}_Part1_GroundTruth"

  @property
  def labels_name(self) -> str:
    return f"ISIC-2017_{self.folder}_Part3_GroundTruth.csv"

  def image_member(self, image_id: str) -> str:
    return f"{self.data_stem}/{image_id}.jpg"

  def mask_member(self, image_id: str) -> str:
    return f"{self.masks_stem}/{image_id}_segmentation.png"


def make_split(folder: str, images: list[FakeImage] | None = None,
               superpixels: bool = True,
               metadata: bool = True) -> SplitFiles:
  """The official files of one split, with superpixels and metadata."""
  images = default_images() if images is None else images
  files = SplitFiles(folder=folder, data={}, masks={},
                     labels="image_id,melanoma,seborrheic_keratosis\n")
  meta = "image_id,age_approximate,sex\n"
  for i, im in enumerate(images):
    rgb, mask = lesion(im.size, seed=i)
    files.data[files.image_member(im.image_id)] = encode(rgb, "JPEG")
    if superpixels:
      # Not an image to train on; the builder must skip it.
      files.data[f"{files.data_stem}/{im.image_id}_superpixels.png"] = encode(
          rgb, "PNG")
    files.masks[files.mask_member(im.image_id)] = encode(mask, "PNG")
    files.labels += (f"{im.image_id},{float(im.melanoma)},"
                     f"{float(im.seborrheic_keratosis)}\n")
    meta += f"{im.image_id},{im.age},{im.sex}\n"
  if metadata:
    files.data[f"{files.data_stem}/{files.data_stem}_metadata.csv"] = (
        meta.encode())
  return files


def _write_archive(manual_dir: str, stem: str, members: dict[str, bytes],
                   as_zip: bool) -> None:
  if as_zip:
    with zipfile.ZipFile(os.path.join(manual_dir, f"{stem}.zip"), "w") as zf:
      zf.writestr(f"{stem}/", b"")  # Directory entry, as the official zips.
      for name, data in members.items():
        zf.writestr(name, data)
  else:
    for name, data in members.items():
      path = os.path.join(manual_dir, name)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "wb") as f:
        f.write(data)


def write_split(manual_dir, files: SplitFiles, as_zip: bool = True,
                data: bool = True, masks: bool = True,
                labels: bool = True) -> None:
  """Writes the chosen parts of ``files`` into ``manual_dir``."""
  manual_dir = os.fspath(manual_dir)
  os.makedirs(manual_dir, exist_ok=True)
  if data:
    _write_archive(manual_dir, files.data_stem, files.data, as_zip)
  if masks:
    _write_archive(manual_dir, files.masks_stem, files.masks, as_zip)
  if labels:
    with open(os.path.join(manual_dir, files.labels_name), "w") as f:
      f.write(files.labels)
