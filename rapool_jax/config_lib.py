"""Shared pieces of the configs in ``configs/``: the paper's four steps as data.

A stage is a ConfigDict; ``config.stage_order`` says which stages run, in which
order (ConfigDict sorts its keys, so the order cannot come from ``config.stages``
itself). Step 1 (initialisation) is not a stage: it is ``config.model.pretrained``.
"""

from __future__ import annotations

import re

import ml_collections

from rapool_jax import errors

# Trainable-parameter rules: (regex on "collection-free" param path, label).
TRAIN_ALL = (("(backbone|classifier|seg_conv|seg_upsample)/.*", "train"),)
TRAIN_BACKBONE_AND_CLASSIFIER = (
    ("(backbone|classifier)/.*", "train"),
    ("(seg_conv|seg_upsample)/.*", "freeze"),
)
TRAIN_SEGMENTATION_CONV_ONLY = (
    ("seg_conv/.*", "train"),
    (".*", "freeze"),
)


def stage(*, pooling: str, lambda_class: float, lambda_seg: float,
          trainable, train_batch_norm: bool, max_steps: int, lr: float,
          schedule: str = "step", decay_every: int = 2000,
          decay_factor: float = 0.1, warmup_steps: int = 0,
          report_as: str = "", init_from: str = "",
          plateau: dict | None = None) -> ml_collections.ConfigDict:
  """One training step of the paper as a config entry.

  Args:
    pooling: name in ``pooling.POOLINGS`` ("gap", "region", ...).
    lambda_class, lambda_seg: loss weights of Eq. 3.
    trainable: regex rules -> "train" / "freeze" (see ``optim.label_params``).
    train_batch_norm: False keeps BatchNorm in inference mode with its
      statistics fixed (the paper's Step 3, where the backbone is frozen).
    max_steps: length in iterations (upper bound when a plateau rule is set).
    lr, schedule, decay_every, decay_factor, warmup_steps: learning rate.
    report_as: row name in the results table ("" = not evaluated on its own).
    init_from: the stage whose final state this one starts from ("" = the
      stage before it in ``stage_order``). Several stages starting from the
      same state are arms of an ablation that differ only in what is ablated.
    plateau: an early-stopping rule (``plateau_rule``'s keys); none by
      default: the stage runs ``max_steps``.
  """
  return ml_collections.ConfigDict(dict(
      pooling=pooling, lambda_class=lambda_class, lambda_seg=lambda_seg,
      trainable=tuple(tuple(r) for r in trainable),
      train_batch_norm=train_batch_norm, max_steps=max_steps, lr=lr,
      schedule=schedule, decay_every=decay_every, decay_factor=decay_factor,
      warmup_steps=warmup_steps, report_as=report_as, init_from=init_from,
      plateau=plateau_rule(**(plateau or {}))))


def plateau_rule(metric: str = "", patience: int = 3, eval_every: int = 100,
                 min_delta: float = 0.0) -> ml_collections.ConfigDict:
  """A stage's early stop: every ``eval_every`` steps the validation
  ``metric`` ("val_loss", "val_auc" or "val_jaccard"; "" = no rule) is
  measured, and the stage stops after ``patience`` evaluations without an
  improvement above ``min_delta``."""
  return ml_collections.ConfigDict(dict(
      metric=metric, patience=patience, eval_every=eval_every,
      min_delta=min_delta))


# Every setting a stage has (what ``check_stage`` accepts).
STAGE_KEYS = frozenset(stage(
    pooling="gap", lambda_class=1.0, lambda_seg=0.0, trainable=TRAIN_ALL,
    train_batch_norm=True, max_steps=0, lr=0.0).keys())


def check_stage_order(config: ml_collections.ConfigDict) -> None:
  """``stage_order`` names stages that exist; an arm starts from a stage
  before it."""
  unknown = [s for s in config.stage_order if s not in config.stages]
  if unknown:
    raise errors.UserError(
        f"config.stage_order names {unknown}, which are not in "
        f"config.stages ({sorted(config.stages)})")
  for i, name in enumerate(config.stage_order):
    src = config.stages[name].get("init_from", "")
    if src and src not in config.stage_order[:i]:
      raise errors.UserError(
          f"config.stages.{name}.init_from={src!r} is not a stage "
          f"before it in config.stage_order "
          f"{tuple(config.stage_order)}")


def paper_stages(*, classification_steps: int, segmentation_steps: int,
                 joint_steps: int, lr: float = 1e-3, decay_every: int = 2000,
                 lambda_seg: float = 7.5, schedule: str = "step"):
  """Steps 2-4 of the paper: GAP classification, segmentation only, joint."""
  lr_schedule = dict(lr=lr, decay_every=decay_every, schedule=schedule)
  stages = ml_collections.ConfigDict()
  stages.classification = stage(
      pooling="gap", lambda_class=1.0, lambda_seg=0.0,
      trainable=TRAIN_BACKBONE_AND_CLASSIFIER, train_batch_norm=True,
      max_steps=classification_steps, report_as="Step 2: GAP", **lr_schedule)
  stages.segmentation = stage(
      pooling="gap", lambda_class=0.0, lambda_seg=1.0,
      trainable=TRAIN_SEGMENTATION_CONV_ONLY, train_batch_norm=False,
      max_steps=segmentation_steps, **lr_schedule)
  stages.joint = stage(
      pooling="region", lambda_class=1.0, lambda_seg=lambda_seg,
      trainable=TRAIN_ALL, train_batch_norm=True, max_steps=joint_steps,
      report_as="Step 4: region pooling", **lr_schedule)
  return stages


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every config; each config file overrides what it needs."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = data_config()
  c.model = ml_collections.ConfigDict(dict(
      backbone="resnet",      # "resnet" (depth below) or "vgg11/13/16/19"
      batch_norm=True,        # VGG only: BatchNorm after each conv (vgg*_bn)
      depth="50", width=1.0,  # "18", "34", "50", "101", "152" or "tiny"
      output_stride=32, dropout_rate=0.2,
      upsample="transposed",  # learned, bilinear-initialised; or "bilinear"
      dtype="float32",        # compute dtype; params stay float32
      num_classes=2,          # set from data.task
      pretrained="",          # ImageNet weights file for Step 1 ("" = random)
  ))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", momentum=0.9, weight_decay=5e-4,
      # "coupled": L2 added to the gradient before momentum, as PyTorch's SGD
      # (what the paper ran); "decoupled": SGDW.
      weight_decay_mode="coupled",
  ))
  c.stage_order = ("classification", "segmentation", "joint")
  c.stages = paper_stages(classification_steps=4000, segmentation_steps=2000,
                          joint_steps=4000)
  c.rankopt = rankopt_config()
  c.train = ml_collections.ConfigDict(dict(
      batch_size=10, eval_batch_size=64, log_every=50, checkpoint_every=500,
      keep_checkpoints=2,
      # Every eval_every steps of every stage, and at its last step, the
      # validation split's AUC, Jaccard and loss go to TensorBoard (0 =
      # never; a plateau rule evaluates at its own interval too). At
      # configs/default.py's size one evaluation (300 images) takes as long
      # as about 2 training steps: 1% of an interval of 200.
      eval_every=200))
  # Paired comparisons by arm name, for the CV and test-split reports
  # (rapool_jax/analysis/design.py; configs/isic2017.py declares them).
  c.report = ml_collections.ConfigDict(dict(
      num_cam_images=6, comparisons=(), sensitivity_comparisons=()))
  c.systems = systems_config()
  return c


def data_config() -> ml_collections.ConfigDict:
  """``config.data``: which data set, its splits' roles and augmentation."""
  return ml_collections.ConfigDict(dict(
      name="synthetic_derm",   # "synthetic_derm" or "isic2017"
      data_dir="",             # where TFDS keeps built data ("" = ~/tensorflow_datasets)
      manual_dir="",           # isic2017: folder with the official zips / folders
      image_size=64,           # stored (resized) size, square
      crop_size=56,            # random crop in training, centre crop in evaluation
      rotate_degrees=180.0,    # random rotation range (+-), mask rotated identically
      flip=True,
      task="melanoma",         # "melanoma" (2 classes) or "three_class"
      train_split="train",
      val_split="validation",  # plateau rules, RankOpt threshold ("" = none)
      eval_split="test",       # the results table
      # Splits on which every reported model also writes its per-image
      # predictions (not in the table): e.g. the official test split for
      # the models of a cross-validation.
      report_splits=(),
      mean=(0.485, 0.456, 0.406),  # RGB in [0, 1]; ImageNet, as the weights expect
      std=(0.229, 0.224, 0.225),
      # A training split up to this size lives on each device (augmented in
      # jit); a larger one streams from host memory through grain.
      device_memory_budget_mb=2048,
      # synthetic_derm only:
      num_train=1200, num_validation=300, num_test=600,
      # Stratified k-fold CV (data/folds.py): with num_folds >= 2 the split
      # names "cv_train", "cv_val", "cv_test" are fold `fold` of the pooled
      # source splits (cv_val: a stratified share of the training folds).
      crossval=ml_collections.ConfigDict(dict(
          num_folds=0, fold=0, seed=0, val_fraction=0.1,
          source_splits=("train", "validation"),
          # Images whose 24 px grayscale correlation reaches this are one
          # lesion and stay in one fold (data/folds.py says why 0.97).
          near_duplicate_threshold=0.97)),
      # Trap set (data/trap.py): an artefact outside the lesion on a share of
      # images that goes with the label at `bias` in the training and
      # validation splits and against it elsewhere; kind "" = off.
      trap=ml_collections.ConfigDict(dict(kind="", bias=0.0, seed=0)),
  ))


def rankopt_config() -> ml_collections.ConfigDict:
  """``config.rankopt``: the linear heads on the pooled features."""
  return ml_collections.ConfigDict(dict(
      enabled=True,
      after_stage="joint",      # features: this stage's pooled features
      report_as="Step 4 + RankOpt",
      radius=0.0,               # ||beta|| = B; 0 = automatic (see rankopt.py)
      radius_scale=10.0,        # automatic B: RMS pair margin in sigmoid units
      max_steps=500,
      threshold_split="validation",  # Youden-J threshold on this split ("" = train)
      # Also fit a class-balanced L2 logistic regression on the same features
      # (L2 and threshold chosen on threshold_split), to compare RankOpt with.
      logistic_regression=False,
      logistic_regression_report_as="Step 4 + logistic regression",
  ))


def systems_config() -> ml_collections.ConfigDict:
  """How the method is computed, not what it computes: one default each.

  None of these changes a result beyond its random stream; measured gains are
  in ``benchmarks/README.md`` (each under the 5% bar for the default path)."""
  return ml_collections.ConfigDict(dict(
      # Random bits for augmentation and dropout keys: "threefry2x32",
      # "rbg" or "unsafe_rbg" (another stream; cheaper on accelerators).
      prng_impl="threefry2x32",
      # Dropout masks: "threefry" is flax's nn.Dropout; "hash" is a keyed
      # hash of each element's index, recomputed where the mask is applied,
      # never stored (models/dropout.py; 1.7% of the H200 joint step).
      dropout_rng="threefry",
      # threefry only: random bits per dropout decision, 32 (nn.Dropout),
      # 16 or 8 (the rate rounded to a multiple of 2**-bits).
      dropout_bits=32,
      # The step donates the train state: updated in place, one copy.
      donate_state=True,
      # The state's device layout: "auto" lets XLA choose it (on a GPU, conv
      # kernels as cuDNN reads them: 2.1% of the H200 step); "default" is
      # row-major.
      state_layout="auto",
      compilation_cache_dir="",  # keeps compiled programs between runs
      # A population's member axis (population.py): "vmap", "map" or
      # "unroll"; "" = the measured default of the backend.
      member_axis="",
  ))


# Where configs saved before the systems block kept its keys (their
# ``config.json``): old key -> new key, or None for a layer since removed
# (same values: the fused BatchNorm, the sliced max pool).
LEGACY_KEYS = {
    "model.dropout_rng": "systems.dropout_rng",
    "model.dropout_bits": "systems.dropout_bits",
    "train.prng_impl": "systems.prng_impl",
    "train.donate_state": "systems.donate_state",
    "train.state_layout": "systems.state_layout",
    "compilation_cache_dir": "systems.compilation_cache_dir",
    "model.batch_norm_impl": None,
    "model.max_pool": None,
}


# A stage's plateau rule was four flat keys before it became one sub-dict.
_LEGACY_PLATEAU = re.compile(
    r"^(stages\.[^.]+)\.plateau_(metric|patience|eval_every|min_delta)$")


def current_key(key: str) -> str | None:
  """Today's name of a dotted config key: the key itself, its new name, or
  None for a key whose layer was removed."""
  m = _LEGACY_PLATEAU.match(key)
  if m:
    return f"{m[1]}.plateau.{m[2]}"
  return LEGACY_KEYS.get(key, key)


def legacy_key_hint(key: str) -> str:
  """Where an old ``--config.KEY`` override lives now ("" = not an old key)."""
  key = key.removeprefix("config.")
  new = current_key(key)
  if new is None:
    return f"config.{key} was removed (the layer it chose is gone)"
  return f"config.{key} is now config.{new}" if new != key else ""


def upgrade_flat(flat: dict) -> dict:
  """A saved config's ``{"a.b": value}`` with today's key names.

  Configs saved before ``model.dropout_rng`` existed drew threefry masks,
  today's default, so its absence needs no entry."""
  return {current_key(key): value for key, value in flat.items()
          if current_key(key) is not None}
