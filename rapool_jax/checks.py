"""The checks that span modules, made before the first training step: the
splits' roles, the loaded splits against the config, and the workdir (a
resumed run's config and data). Each raises ValueError with one line naming
the key, value or file at fault.
"""

from __future__ import annotations

import copy
import json
import os

from flax import traverse_util
import jax
import ml_collections

from rapool_jax import config_lib
from rapool_jax import errors
from rapool_jax import pooling
from rapool_jax.data import isic2017
from rapool_jax.data import pipeline

# What the workdir records about the data it was trained on.
DATA_SOURCE_FILE = "data_source.json"


def resolve_config(config: ml_collections.ConfigDict
                   ) -> ml_collections.ConfigDict:
  """Sets the values a run derives from others (``model.num_classes`` from
  ``data.task``), in place; returns ``config``. The trainer and the resume
  check both see the resolved config, so a re-run compares like with like."""
  config.model.num_classes = pipeline.num_classes(config.data.task)
  return config


def check_split_roles(config) -> None:
  """The splits' roles stay apart: thresholds and plateau rules are chosen on
  a split other than the one reported (``data.eval_split``), and RankOpt's
  threshold split is one of the run's splits."""
  data, rankopt = config.data, config.rankopt
  roles = {data[r] for r in pipeline.SPLIT_ROLES} - {""}
  threshold = rankopt.threshold_split
  if rankopt.enabled and threshold and threshold not in roles:
    raise errors.UserError(
        f"config.rankopt.threshold_split={threshold!r} is not "
        f"one of the run's splits {sorted(roles)} (config.data."
        "train_split, val_split, eval_split); '' = train")
  plateau = any(config.stages[s].plateau.metric for s in config.stage_order)
  # The validation split may be the reported one (the paper's Table 1 picks
  # lambda on it) as long as nothing is chosen on it: no plateau rule.
  for key, value in (("data.val_split", data.val_split if plateau else ""),
                     ("data.train_split", data.train_split),
                     ("rankopt.threshold_split",
                      (threshold or data.train_split) if rankopt.enabled
                      else "")):
    if value and value == data.eval_split:
      raise errors.UserError(
          f"config.{key}={value!r} is the evaluation split (config.data."
          "eval_split): thresholds, plateau rules and training must not see "
          "the images a run reports on; choose another split")


def check_splits(config, splits: dict) -> None:
  """Each split the run uses is non-empty and holds melanomas and others:
  every one is scored by AUC (eval), picks thresholds or stops stages (val)
  or is trained and ranked on (train)."""
  for role in pipeline.SPLIT_ROLES:
    name = config.data[role]
    if not name:
      continue
    labels = splits[name].labels
    melanomas = int((labels == 1).sum())
    if melanomas == 0 or melanomas == len(labels):
      raise errors.UserError(
          f"config.data.{role}={name!r}: the split has {len(labels)} images, "
          f"{melanomas} of them melanomas; AUC and thresholds need both "
          f"melanomas and other lesions: choose another split "
          f"(--config.data.{role}=NAME)")
  check_masks_for_pooling(config, splits)


def check_masks_for_pooling(config, splits: dict) -> None:
  """A stage pooling over the true mask (the oracle) is scored on the
  evaluation split and thresholded on the validation split: both need every
  image's mask (a report split without masks just gets no oracle scores)."""
  for stage in config.stage_order:
    name = config.stages[stage].pooling
    if not pooling.reads_mask(name):
      continue
    for role in ("eval_split", "val_split"):
      split = config.data[role]
      if split and not splits[split].has_mask.all():
        raise errors.UserError(
            f"config.stages.{stage}.pooling={name!r} reads the true mask, but "
            f"{int((~splits[split].has_mask).sum())} images of "
            f"config.data.{role}={split!r} have none")


def data_source(builder) -> dict:
  """What the run's data set was built from: builder, version, split sizes
  and (ISIC 2017) the source files' names, sizes and fingerprints, as the
  build recorded them (``pipeline.make_builder`` has checked them against
  the source folder, rebuilding where they differ)."""
  source = (builder.info.metadata or {}).get("source") or {}
  return {"data_set": f"{builder.name}/{builder.builder_config.name}",
          "version": str(builder.version),
          "splits": {s: builder.info.splits[s].num_examples
                     for s in sorted(builder.info.splits)},
          "files": source.get("files", {})}


def has_checkpoints(workdir: str) -> bool:
  path = os.path.join(workdir, "checkpoints")
  return os.path.isdir(path) and bool(os.listdir(path))


# Where a run reads and writes, how it logs, checkpoints, lays out and
# compiles its state: a resumed run may change these and keep its results
# (streamed and device-resident data train identically).
RESUME_MAY_CHANGE = frozenset({
    "systems.compilation_cache_dir", "data.data_dir", "data.manual_dir",
    "data.device_memory_budget_mb", "report.num_cam_images",
    "report.comparisons", "report.sensitivity_comparisons",
    "train.checkpoint_every", "systems.donate_state", "train.eval_batch_size",
    "train.keep_checkpoints", "train.log_every", "train.eval_every",
    "systems.state_layout"})


def check_resumed_config(config: ml_collections.ConfigDict,
                         workdir: str) -> None:
  """Raises ValueError naming every setting that differs from the run whose
  checkpoints ``workdir`` holds (its ``config.json``): resuming would
  otherwise mix two configurations in one result. Keys in only one of the
  two (added by a newer version) and ``RESUME_MAY_CHANGE`` are not compared."""
  saved_path = os.path.join(workdir, "config.json")
  if not (has_checkpoints(workdir) and os.path.isfile(saved_path)):
    # Checkpoints without the config.json that says what made them would be
    # resumed, and their results labelled, with whatever config runs now;
    # but launch/fanout.py links finished stages of a base run into a new
    # workdir and records where from: those are known.
    if (has_checkpoints(workdir) and not os.path.isfile(
        os.path.join(workdir, "linked_stages.json"))):
      raise errors.UserError(
          f"{workdir} holds checkpoints but no config.json saying which "
          "config made them; use a new --workdir (or restore its config.json)")
    return
  saved = read_json_object(saved_path, "a config")
  saved = config_lib.upgrade_flat(traverse_util.flatten_dict(saved, sep="."))
  # Resolved as the trainer resolves it before writing config.json.
  now = resolve_config(copy.deepcopy(config)).to_json_best_effort()
  now = traverse_util.flatten_dict(json.loads(now), sep=".")
  changed = [f"{key}={saved[key]!r} (now {now[key]!r})"
             for key in sorted(saved.keys() & now.keys())
             if key not in RESUME_MAY_CHANGE and saved[key] != now[key]]
  if changed:
    raise errors.UserError(
        f"{workdir} holds checkpoints of a run with {', '.join(changed)}: "
        "pass the saved values (--config.KEY=VALUE) to resume or re-run it, "
        "or use a new --workdir for the new ones (its results would "
        f"otherwise sit beside a {saved_path} that does not describe them)")


def read_json_object(path: str, what: str) -> dict:
  """The JSON object in a workdir's file ``path``; UserError where it is
  not one (``what`` it should hold)."""
  try:
    with open(path) as f:
      saved = json.load(f)
    if not isinstance(saved, dict):
      raise TypeError(f"a JSON {type(saved).__name__}, not an object")
  except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
    raise errors.UserError(f"{path}: not the JSON of {what} "
                           f"({errors.one_line(e)}); restore it, or use a new "
                           "--workdir") from None
  return saved


def check_data_source(workdir: str, source: dict) -> None:
  """A run resumed on data built from other files stops; a new run records
  its data's source in ``WORKDIR/data_source.json``."""
  path = os.path.join(workdir, DATA_SOURCE_FILE)
  if has_checkpoints(workdir) and os.path.isfile(path):
    saved = read_json_object(path, "the record of a run's data")
    if saved != source:
      what = (isic2017.source_difference(saved.get("files", {}),
                                         source.get("files", {}))
              or f"now {source['data_set']} {source['splits']}, then "
                 f"{saved.get('data_set')} {saved.get('splits')}")
      raise errors.UserError(
          f"{workdir} holds checkpoints trained on other data ({what}); use a "
          f"new --workdir for this data, or the files it was trained on "
          f"(see {path})")
  elif not has_checkpoints(workdir):
    with open(path, "w") as f:
      json.dump(source, f, indent=2, sort_keys=True)


def check_loaded_data(config, workdir: str, splits: dict, builder) -> None:
  """What only the loaded data can tell: both classes in each split, and a
  resumed run's data unchanged (process 0 reads and writes the record).
  ``builder``: the one the splits were loaded from."""
  check_splits(config, splits)
  if jax.process_index() == 0:
    check_data_source(workdir, data_source(builder))


def needs_masks(config) -> bool:
  """A stage trains segmentation: the training split needs lesion masks."""
  return any(config.stages[s].lambda_seg > 0 for s in config.stage_order)
