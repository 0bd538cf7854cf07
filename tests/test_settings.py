"""Every numeric setting has a stated range, checked by its owner before any
data is built (``run.validate_config``), with one line naming key and value."""

import re

import pytest

from rapool_jax import errors
from rapool_jax import population
from rapool_jax import run
from rapool_jax.models import rapool_net

# (dotted key, a value out of its range, what the line says)
OUT_OF_RANGE = [
    ("stages.joint.lr", -1.0, ">= 0"),
    ("stages.joint.warmup_steps", -5, ">= 0"),
    ("stages.joint.decay_every", 0, ">= 1"),
    ("stages.joint.decay_factor", 0.0, "> 0 and <= 1"),
    ("stages.joint.decay_factor", 1.5, "> 0 and <= 1"),
    ("stages.joint.lambda_seg", -0.5, ">= 0"),
    ("stages.joint.lambda_class", -1.0, ">= 0"),
    ("stages.joint.max_steps", -3, ">= 0"),
    ("stages.segmentation.plateau.patience", 0, ">= 1"),
    ("stages.segmentation.plateau.eval_every", 0, ">= 1"),
    ("stages.segmentation.plateau.min_delta", -0.1, ">= 0"),
    ("train.batch_size", 0, ">= 1"),
    ("train.eval_batch_size", 0, ">= 1"),
    ("train.log_every", 0, ">= 1"),
    ("train.eval_every", -1, ">= 0"),
    ("train.checkpoint_every", 0, ">= 1"),
    ("train.keep_checkpoints", 0, ">= 1"),
    ("optimizer.momentum", 1.0, ">= 0 and < 1"),
    ("optimizer.weight_decay", -1e-4, ">= 0"),
    ("data.image_size", 0, ">= 1"),
    ("data.crop_size", 0, ">= 1"),
    ("data.crop_size", 64, "is larger than config.data.image_size=32"),
    ("data.rotate_degrees", -10.0, ">= 0 and <= 180"),
    ("data.device_memory_budget_mb", -1, ">= 0"),
    ("data.num_train", 0, ">= 1"),
    ("data.crossval.val_fraction", 1.0, "must be in (0, 1)"),
    ("data.trap.bias", 1.5, ">= 0 and <= 1"),
    ("data.trap.kind", "ink", "choose one of ('', 'square', 'ruler')"),
    ("rankopt.radius", -1.0, ">= 0"),
    ("rankopt.radius_scale", 0.0, "> 0"),
    ("rankopt.max_steps", 0, ">= 1"),
]


def _set(config, key: str, value) -> None:
  *path, last = key.split(".")
  node = config
  for part in path:
    node = node[part]
  node[last] = value


@pytest.mark.parametrize("key,value,says", OUT_OF_RANGE,
                         ids=[f"{k}={v}" for k, v, _ in OUT_OF_RANGE])
def test_a_setting_out_of_range_is_named_before_anything_is_built(
    tiny_config, key, value, says):
  if key.startswith("data.crossval"):  # read only in a cross-validation run
    tiny_config.data.crossval.num_folds = 5
    tiny_config.data.train_split = "cv_train"
  _set(tiny_config, key, value)
  with pytest.raises(errors.UserError) as info:
    run.validate_config(tiny_config)
  message = str(info.value)
  assert "\n" not in message
  assert f"config.{key}={value!r}" in message, message
  assert says in message, message


def test_the_tiny_config_is_in_range(tiny_config):
  run.validate_config(tiny_config)


@pytest.mark.parametrize("key", ["data.val_split", "rankopt.threshold_split",
                                 "data.train_split"])
def test_thresholds_and_training_never_use_the_evaluation_split(tiny_config,
                                                                key):
  _set(tiny_config, key, tiny_config.data.eval_split)
  if key == "data.val_split":  # a plateau rule chooses on it
    tiny_config.rankopt.threshold_split = ""
    tiny_config.stages.segmentation.plateau.metric = "val_jaccard"
  with pytest.raises(errors.UserError, match=re.escape(
      f"config.{key}='test' is the evaluation split")):
    run.validate_config(tiny_config)


def test_a_selection_run_may_report_on_the_validation_split(tiny_config):
  # The paper's Table 1 picks lambda on validation: allowed while nothing
  # (no plateau rule, no threshold) is chosen on the reported images.
  tiny_config.data.eval_split = "validation"
  tiny_config.rankopt.threshold_split = ""
  run.validate_config(tiny_config)
  tiny_config.rankopt.threshold_split = "validation"
  with pytest.raises(errors.UserError, match="threshold_split='validation' is the "
                           "evaluation split"):
    run.validate_config(tiny_config)


# Owned by build_model: checked when the model is built, before any step.
MODEL_OUT_OF_RANGE = [
    ("model.width", 0.0, "must be > 0"),
    ("model.dropout_rate", 1.0, "must be >= 0 and < 1"),
    ("model.dropout_rate", -0.1, "must be >= 0 and < 1"),
    ("model.backbone", "vgg12", "choose 'resnet'"),
    ("systems.dropout_rng", "philox", "choose one of ('threefry', 'hash')"),
    ("systems.dropout_bits", 4, "choose one of (8, 16, 32)"),
]


@pytest.mark.parametrize("key,value,says", MODEL_OUT_OF_RANGE,
                         ids=[f"{k}={v}" for k, v, _ in MODEL_OUT_OF_RANGE])
def test_a_model_setting_out_of_range_is_named_by_build_model(
    tiny_config, key, value, says):
  _set(tiny_config, key, value)
  with pytest.raises(errors.UserError) as info:
    rapool_net.build_model(tiny_config.model, tiny_config.systems)
  message = str(info.value)
  assert "\n" not in message
  assert f"config.{key}={value!r}" in message, message
  assert says in message, message


def test_an_unknown_member_axis_is_named_before_any_data(tiny_config):
  tiny_config.systems.member_axis = "pmap"
  with pytest.raises(errors.UserError, match=re.escape(
      "config.systems.member_axis='pmap': choose one of")):
    population.check_members(tiny_config, [population.Member(seed=0)])
