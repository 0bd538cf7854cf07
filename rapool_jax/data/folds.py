"""Stratified k-fold cross-validation over pooled splits.

With ``config.data.crossval.num_folds = k > 0`` the splits named in
``crossval.source_splits`` (ISIC 2017: train + validation, 2,150 images) are
pooled and cut into k folds, each with the same share of every class. For fold
f, three derived splits replace the stored ones:

  ``cv_test``   fold f: the images this run scores (out-of-fold);
  ``cv_val``    a stratified ``val_fraction`` of the other folds: thresholds,
                plateau rules and L2 choices, never the scored images;
  ``cv_train``  the rest of the other folds: every training step.

Near-duplicates stay together. Some images of ISIC 2017 are copies of one
another (ISIC_0012127 in validation is pixel-identical to ISIC_0012970 in
training) or the same lesion photographed again. A screen (`screen_features`:
24 x 24 grayscale, Pearson correlation) links every pair at or above
``crossval.near_duplicate_threshold`` (default 0.97); linked images form a group
(connected components), and folds and the inner validation split take whole
groups, stratified by class with each group as one unit.

Why 0.97, from the 2,150 train + validation images at 128 px: nearest-neighbour
correlations are continuous (median 0.83, 99th percentile 0.98), because
dermoscopy images share a layout (a dark lesion mid-frame, vignetted corners).
The 6 pairs at >= 0.99 are all copies of one image (the four known pairs
0012127/0012970, 0012290/0013594, 0012672/0012673, 0012756/0013184 at 0.998 to
1.0); by eye, the pairs in [0.97, 0.99) are nearly all the same lesion
recoloured, shifted or re-zoomed, while in [0.95, 0.97) unrelated lesions of a
similar shape predominate. At 0.97 there are 15 linked pairs, 2,135 groups
(none larger than 2), and 18 of the 600 test images have a near-copy in
train + validation (`near_copies`; 12 at 0.98, 7 at 0.99, 28 at 0.95, where
chains of look-alikes already make a group of 12).

Assignment is a pure function of the image ids, their labels, their groups and
``crossval.seed``, so every fold of a run, and every arm of a fold, sees the
same partition; without near-duplicates it is the plain id-based one.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import sparse

from rapool_jax import errors
from rapool_jax.data import pipeline
from rapool_jax.data import trap

SCREEN_SIZE = 24
# Default of ``config.data.crossval.near_duplicate_threshold``; see above.
NEAR_DUPLICATE_THRESHOLD = 0.97
_BLOCK = 1024  # Query rows per correlation block: 1024 x N float64.


def screen_features(images) -> np.ndarray:
  """``[N, S, S, 3]`` uint8 -> ``[N, 576]`` float64: the images as 24 x 24
  grayscale (area-averaged), each centred and scaled to unit norm, so that a
  dot product of two rows is their Pearson correlation (0 for a flat image)."""
  if not len(images):
    return np.zeros((0, SCREEN_SIZE * SCREEN_SIZE))
  luma = np.float32([0.299, 0.587, 0.114])
  # One image at a time: a float copy of a whole split would be 4x its size.
  x = np.stack([np.asarray(Image.fromarray(np.asarray(im, np.float32) @ luma)
                           .resize((SCREEN_SIZE, SCREEN_SIZE), Image.BOX),
                           np.float64).ravel() for im in images])
  x -= x.mean(1, keepdims=True)
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-9)


def _correlations(query: np.ndarray, reference: np.ndarray):
  """``(first row, [rows, Nr] correlations)`` in blocks of bounded memory."""
  for start in range(0, len(query), _BLOCK):
    yield start, query[start:start + _BLOCK] @ reference.T


def near_duplicate_groups(images, threshold: float) -> np.ndarray:
  """Group id ``[N]`` (int): images linked by a chain of pairs whose screen
  (`screen_features`) correlates at ``>= threshold`` share a group."""
  x = screen_features(images)
  rows, cols = [], []
  for start, corr in _correlations(x, x):
    r, c = np.nonzero(corr >= threshold)
    rows.append(r + start)
    cols.append(c)
  rows, cols = np.concatenate(rows), np.concatenate(cols)
  graph = sparse.coo_matrix((np.ones(len(rows)), (rows, cols)),
                            shape=(len(x), len(x)))
  return sparse.csgraph.connected_components(graph, directed=False)[1]


def near_copies(query_images, reference_images,
                threshold: float) -> np.ndarray:
  """For each query image, the index of its most correlated reference image
  when that correlation is ``>= threshold``, else -1: int ``[Nq]``."""
  reference = screen_features(reference_images)
  out = np.full(len(query_images), -1, np.int64)
  if not len(reference):
    return out
  for start, corr in _correlations(screen_features(query_images), reference):
    best = corr.argmax(1)
    hit = corr[np.arange(len(corr)), best] >= threshold
    out[start:start + len(corr)] = np.where(hit, best, -1)
  return out


def _units(ids, labels, groups=None) -> dict[int, list[np.ndarray]]:
  """The rows of each group (``groups [N]``, default: every image alone), by
  class (its members' largest label), each class's groups ordered by their
  smallest image id."""
  labels = np.asarray(labels)
  groups = np.arange(len(ids)) if groups is None else np.asarray(groups)
  by_group: dict[int, list[int]] = {}
  for row in np.argsort(ids, kind="stable"):
    by_group.setdefault(int(groups[row]), []).append(int(row))
  units: dict[int, list[np.ndarray]] = {}
  for rows in by_group.values():
    units.setdefault(int(labels[rows].max()), []).append(np.asarray(rows))
  return units


def assign_folds(ids, labels, num_folds: int, seed: int,
                 groups=None) -> np.ndarray:
  """Fold index ``[N]`` in ``[0, num_folds)``, stratified by label, each
  group (``groups [N]``, default: every image alone) inside one fold.

  Within each class the groups, ordered by smallest id, are permuted by
  ``seed`` and each dealt to the fold holding the fewest images of that class
  (ties: the lowest fold). Singletons are so dealt in turn, and class counts
  per fold differ by at most the largest group's size.
  """
  if num_folds < 2:
    raise errors.UserError(
        f"config.data.crossval.num_folds={num_folds}: need >= 2")
  folds = np.full(len(ids), -1, np.int64)
  for cls, units in _units(ids, labels, groups).items():
    counts = np.zeros(num_folds, np.int64)
    for i in np.random.default_rng([seed, cls]).permutation(len(units)):
      fold = int(np.argmin(counts))
      folds[units[i]] = fold
      counts[fold] += len(units[i])
  return folds


def inner_validation(ids, labels, fraction: float, seed: int,
                     groups=None) -> np.ndarray:
  """Boolean ``[N]``: a stratified ``fraction`` of the rows (at least one
  group per class), whole groups only (``groups`` as in `assign_folds`)."""
  chosen = np.zeros(len(ids), bool)
  for cls, units in _units(ids, labels, groups).items():
    want, taken = max(1, int(round(fraction * sum(map(len, units))))), 0
    for i in np.random.default_rng([seed, cls, 1]).permutation(len(units)):
      if taken >= want:
        break
      chosen[units[i]] = True
      taken += len(units[i])
  return chosen


def concat(splits) -> pipeline.Split:
  """One ``Split`` of several, rows sorted by image id (ids must be unique)."""
  pooled = pipeline.Split(**{k: np.concatenate([vars(s)[k] for s in splits])
                             for k in vars(splits[0])})
  if len(np.unique(pooled.ids)) != len(pooled):
    raise errors.UserError(
        "crossval source splits share image ids; pool disjoint "
        "splits only")
  return pooled.take(np.argsort(pooled.ids, kind="stable"))


def crossval_splits(pooled: pipeline.Split, crossval) -> dict:
  """``{"cv_train", "cv_val", "cv_test"}`` Splits of fold ``crossval.fold``."""
  k, fold = crossval.num_folds, crossval.fold
  if not 0 <= fold < k:
    raise errors.UserError(
        f"config.data.crossval.fold={fold}: must be in [0, {k})")
  groups = near_duplicate_groups(pooled.images, near_duplicate_threshold(
      crossval))
  test = assign_folds(pooled.ids, pooled.labels, k, crossval.seed,
                      groups) == fold
  rest = np.flatnonzero(~test)
  val = np.zeros(len(pooled), bool)
  val[rest] = inner_validation(pooled.ids[rest], pooled.labels[rest],
                               crossval.val_fraction, crossval.seed + fold,
                               groups[rest])
  return {name: pooled.take(np.flatnonzero(rows)) for name, rows in zip(
      pipeline.CV_SPLITS, (~test & ~val, val, test))}


def near_duplicate_threshold(crossval) -> float:
  """``crossval.near_duplicate_threshold``, or the default where unset."""
  return crossval.get("near_duplicate_threshold", NEAR_DUPLICATE_THRESHOLD)


def load_splits(builder, data_config) -> dict:
  """Every split the config's roles name, as ``{name: Split}``.

  Stored splits load as they are; ``cv_*`` names are derived from the pooled
  ``crossval.source_splits``.
  """
  names = {data_config[r] for r in pipeline.SPLIT_ROLES}
  names = (names | set(data_config.get("report_splits", ()))) - {""}
  check_crossval(data_config)
  load = lambda name: pipeline.load_split(  # noqa: E731
      builder, name, data_config.task)
  out = {name: load(name) for name in sorted(names - set(pipeline.CV_SPLITS))}
  if names & set(pipeline.CV_SPLITS):
    pooled = concat([out.get(s) or load(s)
                     for s in data_config.crossval.source_splits])
    out.update(crossval_splits(pooled, data_config.crossval))
  return trap.apply_to_splits(out, data_config)


def check_crossval(data_config) -> None:
  """Rejects, before any data loads, split names and fold settings that disagree."""
  cv, cv_names = data_config.crossval, sorted(
      {data_config[r] for r in pipeline.SPLIT_ROLES} & set(pipeline.CV_SPLITS))
  if cv_names:
    if cv.num_folds < 2:
      raise errors.UserError(
          f"config.data splits name {cv_names} but "
          f"config.data.crossval.num_folds={cv.num_folds}; set it to >= 2")
    if not 0 <= cv.fold < cv.num_folds:
      raise errors.UserError(f"config.data.crossval.fold={cv.fold}: must be in "
                             f"[0, {cv.num_folds})")
    if not 0 < cv.val_fraction < 1:
      raise errors.UserError(
          f"config.data.crossval.val_fraction={cv.val_fraction}: "
          "must be in (0, 1)")
    if not 0 < (t := near_duplicate_threshold(cv)) <= 1:
      raise errors.UserError(
          f"config.data.crossval.near_duplicate_threshold={t}: "
          "must be in (0, 1]")
