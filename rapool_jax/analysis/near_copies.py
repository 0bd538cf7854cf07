"""The test images with a near-copy in train + validation: listed in a file,
or found by ``folds.near_copies`` on a run's data; ``test_near_copies.csv``."""

from __future__ import annotations

import os

import ml_collections
import pandas as pd

from rapool_jax.analysis import frames
from rapool_jax.data import folds
from rapool_jax.data import pipeline

FILE = "test_near_copies.csv"
TEST_SPLIT = "test"


def read_image_list(path: str) -> list[str]:
  """Image ids of FILE: a CSV with an ``image`` column, or one id a line."""
  with open(path, newline="") as f:
    lines = [ln.strip() for ln in f if ln.strip()]
  if lines and lines[0].split(",")[0] == "image":
    return sorted(set(frames.read_csv(path)["image"]))
  return sorted(set(lines))


def near_copy_rows(test, reference, threshold: float) -> list[dict]:
  """``{image, reference}`` for each image of ``test`` with a near-copy in
  ``reference`` (``pipeline.Split``s): ``folds.near_copies``' screen, 24 px
  grayscale correlation ``>= threshold``."""
  hit = folds.near_copies(test.images, reference.images, threshold)
  return [{"image": str(i), "reference": str(reference.ids[h])}
          for i, h in zip(test.ids, hit) if h >= 0]


def near_copies_of_run(run_dir: str, root: str = "") -> list[dict]:
  """The test images of RUN_DIR's data with a near-copy in the splits the
  run trained and validated on (``crossval.source_splits``), at the run's
  ``crossval.near_duplicate_threshold``. Relative data paths in its
  config.json start at ``root`` (default: here). Loads the data (TFDS)."""
  data = ml_collections.ConfigDict(frames.run_config(run_dir)["data"])
  for key in ("data_dir", "manual_dir"):
    if data[key] and root:
      data[key] = os.path.join(root, data[key])
  builder = pipeline.make_builder(data, require_train_masks=False)
  load = lambda name: pipeline.load_split(builder, name, data.task)  # noqa: E731
  reference = folds.concat([load(n) for n in data.crossval.source_splits])
  return near_copy_rows(load(TEST_SPLIT), reference,
                        folds.near_duplicate_threshold(data.crossval))


def write(out: str, exclude) -> None:
  """OUT/test_near_copies.csv from a file of image ids (``exclude`` a path)
  or ``near_copy_rows``; removed when ``exclude`` is empty."""
  path = os.path.join(out, FILE)
  if os.path.exists(path):
    os.remove(path)  # never a stale list from an earlier report
  if isinstance(exclude, str) and exclude:
    exclude = [{"image": i} for i in read_image_list(exclude)]
  if exclude:
    frames.write_csv(path, pd.DataFrame(exclude))


def read(out: str) -> list[str] | None:
  """OUT's near-copy image ids, or None without the file."""
  path = os.path.join(out, FILE)
  return read_image_list(path) if os.path.exists(path) else None
