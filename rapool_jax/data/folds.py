"""Stratified k-fold cross-validation over pooled splits.

With ``config.data.crossval.num_folds = k > 0`` the splits named in
``crossval.source_splits`` (ISIC 2017: train + validation, 2,150 images) are
pooled and cut into k folds, each with the same share of every class. For fold
f, three derived splits replace the stored ones:

  ``cv_test``   fold f: the images this run scores (out-of-fold);
  ``cv_val``    a stratified ``val_fraction`` of the other folds: thresholds,
                plateau rules and L2 choices, never the scored images;
  ``cv_train``  the rest of the other folds: every training step.

Assignment is a pure function of the image ids, their labels and
``crossval.seed``, so every fold of a run, and every arm of a fold, sees the same
partition.
"""

from __future__ import annotations

import numpy as np

from rapool_jax.data import pipeline

CV_SPLITS = ("cv_train", "cv_val", "cv_test")


def assign_folds(ids, labels, num_folds: int, seed: int) -> np.ndarray:
  """Fold index ``[N]`` in ``[0, num_folds)``, stratified by label.

  Within each class the images, ordered by id, are permuted by ``seed`` and
  dealt to the folds in turn, so class counts differ by at most one per fold.
  """
  ids, labels = np.asarray(ids), np.asarray(labels)
  if num_folds < 2:
    raise ValueError(f"config.data.crossval.num_folds={num_folds}: need >= 2")
  folds = np.full(len(ids), -1, np.int64)
  for cls in np.unique(labels):
    members = np.flatnonzero(labels == cls)
    members = members[np.argsort(ids[members], kind="stable")]
    order = np.random.default_rng([seed, int(cls)]).permutation(len(members))
    folds[members[order]] = np.arange(len(members)) % num_folds
  return folds


def inner_validation(ids, labels, fraction: float, seed: int) -> np.ndarray:
  """Boolean ``[N]``: a stratified ``fraction`` of the rows (at least one per class)."""
  ids, labels = np.asarray(ids), np.asarray(labels)
  chosen = np.zeros(len(ids), bool)
  for cls in np.unique(labels):
    members = np.flatnonzero(labels == cls)
    members = members[np.argsort(ids[members], kind="stable")]
    take = max(1, int(round(fraction * len(members))))
    pick = np.random.default_rng([seed, int(cls), 1]).permutation(
        len(members))[:take]
    chosen[members[pick]] = True
  return chosen


def concat(splits) -> pipeline.Split:
  """One ``Split`` of several, rows sorted by image id (ids must be unique)."""
  fields = {f: np.concatenate([getattr(s, f) for s in splits])
            for f in ("images", "masks", "labels", "has_mask", "ids")}
  if len(np.unique(fields["ids"])) != len(fields["ids"]):
    raise ValueError("crossval source splits share image ids; pool disjoint "
                     "splits only")
  order = np.argsort(fields["ids"], kind="stable")
  return pipeline.Split(**{k: v[order] for k, v in fields.items()})


def take(split: pipeline.Split, rows) -> pipeline.Split:
  return pipeline.Split(images=split.images[rows], masks=split.masks[rows],
                        labels=split.labels[rows],
                        has_mask=split.has_mask[rows], ids=split.ids[rows])


def crossval_splits(pooled: pipeline.Split, crossval) -> dict:
  """``{"cv_train", "cv_val", "cv_test"}`` Splits of fold ``crossval.fold``."""
  k, fold = crossval.num_folds, crossval.fold
  if not 0 <= fold < k:
    raise ValueError(f"config.data.crossval.fold={fold}: must be in [0, {k})")
  folds = assign_folds(pooled.ids, pooled.labels, k, crossval.seed)
  test = folds == fold
  rest = np.flatnonzero(~test)
  val = np.zeros(len(pooled), bool)
  val[rest] = inner_validation(pooled.ids[rest], pooled.labels[rest],
                               crossval.val_fraction, crossval.seed + fold)
  train = ~test & ~val
  return {"cv_train": take(pooled, np.flatnonzero(train)),
          "cv_val": take(pooled, np.flatnonzero(val)),
          "cv_test": take(pooled, np.flatnonzero(test))}


def load_splits(builder, data_config) -> dict:
  """Every split the config's roles name, as ``{name: Split}``.

  Stored splits load as they are; ``cv_*`` names are derived from the pooled
  ``crossval.source_splits``.
  """
  names = {data_config[r] for r in ("train_split", "val_split", "eval_split")}
  names |= set(data_config.get("report_splits", ()))
  names.discard("")
  check_crossval(data_config)
  out = {}
  stored = sorted(n for n in names if n not in CV_SPLITS)
  for name in stored:
    out[name] = pipeline.load_split(builder, name, data_config.task)
  if names & set(CV_SPLITS):
    cv = data_config.crossval
    pooled = concat([out.get(s) or pipeline.load_split(builder, s,
                                                       data_config.task)
                     for s in cv.source_splits])
    out.update(crossval_splits(pooled, cv))
  return out


def check_crossval(data_config) -> None:
  """Rejects, before any data loads, split names and fold settings that disagree."""
  names = {data_config[r] for r in ("train_split", "val_split", "eval_split")}
  cv = data_config.crossval
  if names & set(CV_SPLITS):
    if cv.num_folds < 2:
      raise ValueError(
          f"config.data splits name {sorted(names & set(CV_SPLITS))} but "
          f"config.data.crossval.num_folds={cv.num_folds}; set it to >= 2")
    if not 0 <= cv.fold < cv.num_folds:
      raise ValueError(f"config.data.crossval.fold={cv.fold}: must be in "
                       f"[0, {cv.num_folds})")
    if not 0 < cv.val_fraction < 1:
      raise ValueError(f"config.data.crossval.val_fraction={cv.val_fraction}: "
                       "must be in (0, 1)")
