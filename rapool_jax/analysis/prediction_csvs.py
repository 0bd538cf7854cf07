"""Labels and prediction CSVs of any labelled image set, read strictly: a
bad file is a ``UserError`` naming it (``launch/compare_predictions.py``)."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from rapool_jax import errors

ID_COLUMNS = ("image", "image_id")


def _read_column(path: str, column: str) -> dict[str, str]:
  """{image id: the row's ``column``} of a CSV with an image id column."""
  if not os.path.isfile(path):
    raise errors.UserError(f"{path}: no such file")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    id_col = next((c for c in ID_COLUMNS if c in header), None)
    if id_col is None or column not in header:
      raise errors.UserError(
          f"{path}: needs the columns image (or image_id) and {column}, has "
          f"{', '.join(header) or 'none'}")
    out = {}
    for line, row in enumerate(reader, start=2):
      if row[id_col] in out:
        raise errors.UserError(f"{path}: line {line}: image {row[id_col]} "
                               "appears twice")
      out[row[id_col]] = row[column]
  if not out:
    raise errors.UserError(f"{path}: no rows")
  return out


def _numbers(path: str, column: str, values: dict[str, str]) -> dict:
  out = {}
  for image, text in values.items():
    try:
      out[image] = float(text)
    except (TypeError, ValueError):
      out[image] = math.nan
    if not math.isfinite(out[image]):
      raise errors.UserError(f"{path}: image {image}: {column}={text!r} is "
                             "not a finite number")
  return out


def read_labels(path: str, column: str) -> tuple[list[str], np.ndarray]:
  """(sorted image ids, 0/1 labels [N]) of a labels CSV."""
  values = _numbers(path, column, _read_column(path, column))
  bad = [f"{i}={v:g}" for i, v in values.items() if v not in (0.0, 1.0)]
  if bad:
    raise errors.UserError(f"{path}: {column} must be 0 or 1, got "
                           f"{', '.join(bad[:5])}")
  images = sorted(values)
  labels = np.array([int(values[i]) for i in images])
  if min(labels.sum(), labels.size - labels.sum()) < 2:
    raise errors.UserError(
        f"{path}: {labels.sum()} image(s) with {column}=1 and "
        f"{labels.size - labels.sum()} with 0; DeLong's CI needs at least 2 "
        "of each")
  return images, labels


def _ids(ids, limit: int = 5) -> str:
  ids = sorted(ids)
  more = f", ... ({len(ids)} in all)" if len(ids) > limit else ""
  return ", ".join(ids[:limit]) + more


def read_scores(path: str, column: str, images: list[str],
                labels_path: str) -> np.ndarray:
  """Scores [N] of a prediction CSV, in the order of ``images``."""
  values = _numbers(path, column, _read_column(path, column))
  missing, extra = set(images) - set(values), set(values) - set(images)
  if missing or extra:
    what = ([f"missing {len(missing)} image(s) of {labels_path} "
             f"({_ids(missing)})"] if missing else []) + (
                 [f"{len(extra)} image(s) not in {labels_path} "
                  f"({_ids(extra)})"] if extra else [])
    raise errors.UserError(f"{path}: {'; '.join(what)}")
  return np.array([values[i] for i in images])


def parse_models(specs: list[str]) -> list[tuple[str, list[str]]]:
  """``PATH`` or ``NAME=PATH[,PATH...]`` -> [(name, paths)]. A bare PATH is
  named by its file stem, or by the path itself where stems collide."""
  stems = [Path(s).stem for s in specs if "=" not in s]
  models = []
  for spec in specs:
    name, sep, paths = spec.partition("=")
    if not sep:
      stem = Path(spec).stem
      name, paths = (stem if stems.count(stem) == 1 else spec), spec
    models.append((name, [p for p in paths.split(",") if p]))
  names = [n for n, _ in models]
  for name, paths in models:
    if not paths or names.count(name) > 1:
      raise errors.UserError(f"model {name!r}: give NAME=PATH[,PATH...] with "
                             "a name used once")
  return models
