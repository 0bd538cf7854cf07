"""Every check that can fail a run, made before its first training step.

``check_config`` needs only the config (values, stage rules, weights file);
``check_before_training`` also sees the loaded splits, the model's parameter
tree and the workdir. Each raises ValueError with one line naming the key,
value or file at fault.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re

import ml_collections

from rapool_jax import config_lib
from rapool_jax import errors
from rapool_jax import evaluate
from rapool_jax import optim
from rapool_jax import pooling as pooling_lib
from rapool_jax import sharding
from rapool_jax.data import folds
from rapool_jax.data import pipeline

DTYPES = ("float32", "bfloat16")
DATA_SETS = ("synthetic_derm", "isic2017")
TASKS = ("melanoma", "three_class")
PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
PLATEAU_METRICS = evaluate.PLATEAU_METRICS
RULE_LABELS = ("train", "freeze")
WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# What the workdir records about the data it was trained on.
DATA_SOURCE_FILE = "data_source.json"


def resolve_config(config: ml_collections.ConfigDict
                   ) -> ml_collections.ConfigDict:
  """Sets the values a run derives from others (``model.num_classes`` from
  ``data.task``), in place; returns ``config``. The trainer and the resume
  check both see the resolved config, so a re-run compares like with like."""
  check_choice("config.data.task", config.data.task, TASKS)
  config.model.num_classes = pipeline.num_classes(config.data.task)
  return config


def resolved_copy(config: ml_collections.ConfigDict
                  ) -> ml_collections.ConfigDict:
  return resolve_config(copy.deepcopy(config))


def check_choice(key: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"{key}={value!r}: choose one of {tuple(choices)}")


def check_trainable_rules(where: str, rules) -> None:
  """``rules``: a sequence of ``(regex, "train" | "freeze")`` pairs."""
  hint = (f"{where}.trainable={rules!r}: expected pairs (regex, 'train' or "
          "'freeze'), e.g. (('backbone/.*', 'freeze'), ('.*', 'train'))")
  if isinstance(rules, (str, bytes)) or not hasattr(rules, "__iter__"):
    raise ValueError(hint)
  rules = list(rules)
  if not rules:
    raise ValueError(f"{where}.trainable is empty; {hint.split(': ', 1)[1]}")
  for rule in rules:
    if (isinstance(rule, (str, bytes)) or not hasattr(rule, "__len__")
        or len(rule) != 2 or not all(isinstance(r, str) for r in rule)):
      raise ValueError(hint)
    pattern, label = rule
    try:
      re.compile(pattern)
    except re.error as e:
      raise ValueError(f"{where}.trainable: rule {pattern!r} is not a regular "
                       f"expression ({e})") from None
    if label not in RULE_LABELS:
      raise ValueError(f"{where}.trainable: rule ({pattern!r}, {label!r}): "
                       f"the label must be one of {RULE_LABELS}")


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):  # e.g. sys.modules[module] is None
    return False


def check_weights_file(path: str) -> None:
  """The ImageNet weights file exists and can be read here."""
  if not path:
    return
  if not os.path.isfile(path):
    raise ValueError(f"config.model.pretrained={path!r}: no such file")
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in WEIGHTS_SUFFIXES:
    raise ValueError(f"config.model.pretrained={path!r}: unsupported file type "
                     f"{suffix!r}; expected one of {WEIGHTS_SUFFIXES}")
  if suffix != ".safetensors" and not _installed("torch"):
    raise ValueError(f"{path}: reading {suffix} weights needs PyTorch, which "
                     "is not installed: pip install torch (CPU wheels: pip "
                     "install torch --index-url "
                     "https://download.pytorch.org/whl/cpu)")


def check_config(config) -> None:
  """Rejects, before any data is built, a config value a later step would
  trip on.

  Raises:
    ValueError: naming the config key and its value.
  """
  unknown = [s for s in config.stage_order if s not in config.stages]
  if unknown:
    raise ValueError(f"config.stage_order names {unknown}, which are not in "
                     f"config.stages ({sorted(config.stages)})")
  check_choice("config.data.name", config.data.name, DATA_SETS)
  check_choice("config.data.task", config.data.task, TASKS)
  check_choice("config.model.dtype", config.model.dtype, DTYPES)
  check_choice("config.systems.prng_impl", config.systems.prng_impl,
               PRNG_IMPLS)
  check_weights_file(config.model.pretrained)
  folds.check_crossval(config.data)
  if config.data.crop_size > config.data.image_size:
    raise ValueError(f"config.data.crop_size={config.data.crop_size} is larger "
                     f"than config.data.image_size={config.data.image_size}")
  for i, name in enumerate(config.stage_order):
    src = config.stages[name].get("init_from", "")
    if src and src not in config.stage_order[:i]:
      raise ValueError(f"config.stages.{name}.init_from={src!r} is not a stage "
                       f"before it in config.stage_order "
                       f"{tuple(config.stage_order)}")
  if config.rankopt.enabled:
    if config.rankopt.after_stage not in config.stage_order:
      raise ValueError(f"config.rankopt.after_stage="
                       f"{config.rankopt.after_stage!r} is not in "
                       f"config.stage_order {tuple(config.stage_order)}")
  sharding.check_state_layout(config.systems.state_layout)
  for key in ("batch_size", "eval_batch_size", "log_every", "checkpoint_every"):
    if config.train[key] < 1:
      raise ValueError(f"config.train.{key}={config.train[key]} must be >= 1")
  for name in config.stage_order:
    check_stage(config, name)
  roles = {config.data[r] for r in pipeline.SPLIT_ROLES} - {""}
  threshold = config.rankopt.threshold_split
  if config.rankopt.enabled and threshold and threshold not in roles:
    raise ValueError(f"config.rankopt.threshold_split={threshold!r} is not "
                     f"one of the run's splits {sorted(roles)} (config.data."
                     "train_split, val_split, eval_split); '' = train")



def check_stage(config, name: str) -> None:
  """One stage's pooling, trainable rules, schedule and plateau rule."""
  stage, where = config.stages[name], f"config.stages.{name}"
  for key in sorted(set(stage.keys()) - config_lib.STAGE_KEYS):
    # A config file that sets an unknown key on a stage would otherwise
    # train without the setting it meant.
    hint = config_lib.legacy_key_hint(f"stages.{name}.{key}")
    raise ValueError(f"{where}.{key} is not a stage setting; "
                     + (hint or f"choose from {sorted(config_lib.STAGE_KEYS)}"))
  check_trainable_rules(where, stage.trainable)
  if stage.pooling not in pooling_lib.POOLINGS:
    raise ValueError(f"{where}.pooling={stage.pooling!r}: choose one of "
                     f"{sorted(pooling_lib.POOLINGS)}")
  if stage.schedule not in optim.SCHEDULES:
    raise ValueError(f"{where}.schedule={stage.schedule!r}: choose one of "
                     f"{optim.SCHEDULES}")
  if stage.max_steps < 0:
    raise ValueError(f"{where}.max_steps={stage.max_steps} is negative")
  plateau = stage.plateau
  if (stage.schedule == "step" and not plateau.metric
      and 0 < stage.max_steps <= stage.decay_every):
    # A step schedule that never steps is usually a constant one by mistake
    # (the stage ends at its peak lr), but a shortened smoke run may mean it:
    # say so, before training, without stopping.
    print(f"warning: {where}: schedule='step' with max_steps="
          f"{stage.max_steps} <= decay_every={stage.decay_every} never "
          f"lowers the lr; set {where}.decay_every below max_steps or "
          f"{where}.schedule='cosine' for a stage that anneals", flush=True)
  if (stage.schedule == "cosine" and stage.max_steps > 0
      and stage.get("warmup_steps", 0) >= stage.max_steps):
    raise ValueError(f"{where}.warmup_steps={stage.warmup_steps} must be "
                     f"below its max_steps={stage.max_steps}")
  for key in ("eval_every", "patience"):
    if plateau[key] < 1:
      raise ValueError(f"{where}.plateau.{key}={plateau[key]} must be >= 1")
  if plateau.metric and plateau.metric not in PLATEAU_METRICS:
    raise ValueError(f"{where}.plateau.metric={plateau.metric!r}: "
                     f"choose '' or one of {PLATEAU_METRICS}")
  if plateau.metric and not config.data.val_split:
    raise ValueError(f"{where}.plateau.metric={plateau.metric!r} "
                     "needs config.data.val_split, which is empty")


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
      raise ValueError(
          f"config.data.{role}={name!r}: the split has {len(labels)} images, "
          f"{melanomas} of them melanomas; AUC and thresholds need both "
          f"melanomas and other lesions: choose another split "
          f"(--config.data.{role}=NAME)")


def check_trainable_coverage(config, model) -> None:
  """Every parameter matches a trainable rule of every stage (shapes only,
  nothing is computed)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  crop = config.data.crop_size
  shapes = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)},
                         jnp.zeros((1, crop, crop, 3), jnp.float32),
                         train=False))
  for name in config.stage_order:
    try:
      optim.label_params(shapes["params"], config.stages[name].trainable)
    except ValueError as e:
      raise ValueError(f"config.stages.{name}.trainable: {e}") from None


def data_source(config, require_train_masks: bool) -> dict:
  """What the run's data set was built from: builder, version, split sizes
  and (ISIC 2017) the source files' names, sizes and fingerprints."""
  builder = pipeline.make_builder(config.data,
                                  require_train_masks=require_train_masks)
  source = builder.info.metadata.get("source") or {}
  return {"data_set": f"{builder.name}/{builder.builder_config.name}",
          "version": str(builder.version),
          "splits": {s: builder.info.splits[s].num_examples
                     for s in sorted(builder.info.splits)},
          "files": source.get("files", {})}


def has_checkpoints(workdir: str) -> bool:
  path = os.path.join(workdir, "checkpoints")
  return os.path.isdir(path) and bool(os.listdir(path))


def check_workdir_labels(workdir: str) -> None:
  """Checkpoints without the ``config.json`` that says what made them would
  be resumed, and their results labelled, with whatever config runs now."""
  # launch/fanout.py links finished stages of a base run into a new workdir
  # and records where from: those are known.
  if (has_checkpoints(workdir)
      and not os.path.isfile(os.path.join(workdir, "config.json"))
      and not os.path.isfile(os.path.join(workdir, "linked_stages.json"))):
    raise ValueError(
        f"{workdir} holds checkpoints but no config.json saying which config "
        "made them; use a new --workdir (or restore its config.json)")



# Where a run reads and writes, how it logs, checkpoints, lays out and
# compiles its state: a resumed run may change these and keep its results
# (streamed and device-resident data train identically).
RESUME_MAY_CHANGE = frozenset({
    "systems.compilation_cache_dir", "data.data_dir", "data.manual_dir",
    "data.device_memory_budget_mb", "report.num_cam_images",
    "train.checkpoint_every", "systems.donate_state", "train.eval_batch_size",
    "train.keep_checkpoints", "train.log_every", "systems.state_layout"})


def check_resumed_config(config: ml_collections.ConfigDict,
                         workdir: str) -> None:
  """Raises ValueError naming every setting that differs from the run whose
  checkpoints ``workdir`` holds (its ``config.json``): resuming would
  otherwise mix two configurations in one result. Keys in only one of the
  two (added by a newer version) and ``RESUME_MAY_CHANGE`` are not compared."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  check_workdir_labels(workdir)
  saved_path = os.path.join(workdir, "config.json")
  # No config.json beside checkpoints: stages linked by launch/fanout.py
  # (check_workdir_labels refuses any other case).
  if not (has_checkpoints(workdir) and os.path.isfile(saved_path)):
    return
  try:
    with open(saved_path) as f:
      saved = json.load(f)
    if not isinstance(saved, dict):
      raise TypeError(f"a JSON {type(saved).__name__}, not an object")
  except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
    raise ValueError(f"{saved_path}: not the JSON of a config "
                     f"({errors.one_line(e)}); restore it, or use a new "
                     "--workdir") from None
  saved = config_lib.upgrade_flat(traverse_util.flatten_dict(saved, sep="."))
  # Resolved as the trainer resolves it before writing config.json.
  now = traverse_util.flatten_dict(
      json.loads(resolved_copy(config).to_json_best_effort()), sep=".")
  changed = [f"{key}={saved[key]!r} (now {now[key]!r})"
             for key in sorted(saved.keys() & now.keys())
             if key not in RESUME_MAY_CHANGE and saved[key] != now[key]]
  if changed:
    raise ValueError(
        f"{workdir} holds checkpoints of a run with {', '.join(changed)}: "
        "pass the saved values (--config.KEY=VALUE) to resume or re-run it, "
        "or use a new --workdir for the new ones (its results would "
        f"otherwise sit beside a {saved_path} that does not describe them)")


def check_data_source(workdir: str, source: dict) -> None:
  """A run resumed on data built from other files stops; a new run records
  its data's source in ``WORKDIR/data_source.json``."""
  path = os.path.join(workdir, DATA_SOURCE_FILE)
  if has_checkpoints(workdir) and os.path.isfile(path):
    with open(path) as f:
      saved = json.load(f)
    if saved != source:
      from rapool_jax.data import isic2017  # pylint: disable=g-import-not-at-top
      what = (isic2017.source_difference(saved.get("files", {}),
                                         source.get("files", {}))
              or f"now {source['data_set']} {source['splits']}, then "
                 f"{saved.get('data_set')} {saved.get('splits')}")
      raise ValueError(
          f"{workdir} holds checkpoints trained on other data ({what}); use a "
          f"new --workdir for this data, or the files it was trained on "
          f"(see {path})")
  elif not has_checkpoints(workdir):
    with open(path, "w") as f:
      json.dump(source, f, indent=2, sort_keys=True)


def check_before_training(config, workdir: str, trainer) -> None:
  """Everything a run needs that only the loaded data and model can tell:
  both classes in each split, trainable rules covering every parameter, and
  a resumed run's data unchanged."""
  check_splits(config, trainer.splits)
  check_trainable_coverage(config, trainer.model)
  needs_masks = any(config.stages[s].lambda_seg > 0 for s in config.stage_order)
  source = data_source(config, needs_masks)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    check_data_source(workdir, source)
