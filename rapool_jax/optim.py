"""Per-step trainable sets and the optimizer.

A stage names its trainable parameters with regex rules on parameter paths
(``"backbone/layer4_0/conv1/kernel"``). The first matching rule labels a leaf
``"train"`` or ``"freeze"``; every leaf must match some rule. Frozen leaves get
``optax.set_to_zero()``, so they carry no optimizer state and never move.
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
import optax

from rapool_jax import errors

RULE_LABELS = ("train", "freeze")
SCHEDULES = ("step", "cosine", "constant")
OPTIMIZERS = ("sgd", "adamw")
WEIGHT_DECAY_MODES = ("coupled", "decoupled")


def path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def label_params(params, rules: Sequence[tuple[str, str]]):
  """Labels each leaf by the first rule whose regex matches its path (rules
  as ``check_trainable_rules`` accepts); ValueError for a leaf none matches."""
  uncovered = []

  def label_of(path, _):
    name = path_str(path)
    label = next((label for pattern, label in rules
                  if re.fullmatch(pattern, name)), None)
    if label is None:
      uncovered.append(name)
    return label or "freeze"

  labels = jax.tree_util.tree_map_with_path(label_of, params)
  if uncovered:
    raise errors.UserError(
        f"trainable rules {[r for r, _ in rules]} cover no rule for "
        f"{len(uncovered)} parameter(s), e.g. {uncovered[:3]}; add a catch-all "
        "rule such as ('.*', 'freeze')")
  return labels


def check_trainable_rules(where: str, rules) -> None:
  """``rules``: a non-empty sequence of ``(regex, "train" | "freeze")``."""
  hint = (f"{where}.trainable={rules!r}: expected pairs (regex, 'train' or "
          "'freeze'), e.g. (('backbone/.*', 'freeze'), ('.*', 'train'))")
  if isinstance(rules, (str, bytes)) or not hasattr(rules, "__iter__"):
    raise errors.UserError(hint)
  rules = list(rules)
  if not rules:
    raise errors.UserError(
        f"{where}.trainable is empty; {hint.split(': ', 1)[1]}")
  for rule in rules:
    if (isinstance(rule, (str, bytes)) or not hasattr(rule, "__len__")
        or len(rule) != 2 or not all(isinstance(r, str) for r in rule)):
      raise errors.UserError(hint)
    pattern, label = rule
    try:
      re.compile(pattern)
    except re.error as e:
      raise errors.UserError(
          f"{where}.trainable: rule {pattern!r} is not a regular "
          f"expression ({e})") from None
    if label not in RULE_LABELS:
      raise errors.UserError(
          f"{where}.trainable: rule ({pattern!r}, {label!r}): "
          f"the label must be one of {RULE_LABELS}")


def check_schedule(stage, where: str) -> None:
  """The stage's learning-rate settings, each in its range."""
  errors.check_choice(f"{where}.schedule", stage.schedule, SCHEDULES)
  errors.check_range(f"{where}.lr", stage.lr, low=0)
  errors.check_range(f"{where}.warmup_steps", stage.warmup_steps, low=0)
  errors.check_range(f"{where}.decay_every", stage.decay_every, low=1)
  errors.check_range(f"{where}.decay_factor", stage.decay_factor, low=0,
                     high=1, low_open=True)
  if (stage.schedule == "cosine" and stage.max_steps > 0
      and stage.warmup_steps >= stage.max_steps):
    raise errors.UserError(f"{where}.warmup_steps={stage.warmup_steps} must be "
                           f"below its max_steps={stage.max_steps}")


def warn_if_never_annealed(stage, where: str) -> None:
  """A step schedule that never steps is usually a constant one by mistake
  (the stage ends at its peak lr), but a shortened smoke run may mean it:
  say so, before training, without stopping."""
  if (stage.schedule == "step" and not stage.plateau.metric
      and 0 < stage.max_steps <= stage.decay_every):
    print(f"warning: {where}: schedule='step' with max_steps="
          f"{stage.max_steps} <= decay_every={stage.decay_every} never "
          f"lowers the lr; set {where}.decay_every below max_steps or "
          f"{where}.schedule='cosine' for a stage that anneals", flush=True)


def check_optimizer(optimizer_config) -> None:
  errors.check_choice("config.optimizer.name", optimizer_config.name,
                      OPTIMIZERS)
  errors.check_choice("config.optimizer.weight_decay_mode",
                      optimizer_config.weight_decay_mode, WEIGHT_DECAY_MODES)
  errors.check_range("config.optimizer.momentum", optimizer_config.momentum,
                     low=0, high=1, high_open=True)
  errors.check_range("config.optimizer.weight_decay",
                     optimizer_config.weight_decay, low=0)


def learning_rate_schedule(stage):
  """Schedule of one stage from its config (``lr``, ``schedule``, ...)."""
  if stage.schedule == "step":
    # Paper: lr divided by 10 every 2000 iterations.
    return optax.exponential_decay(
        stage.lr, transition_steps=stage.decay_every,
        decay_rate=stage.decay_factor, staircase=True)
  if stage.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, stage.lr, stage.warmup_steps, max(stage.max_steps, 1))
  return optax.constant_schedule(stage.lr)


def make_optimizer(optimizer_config, stage, params, where: str = "stage"):
  """optax transform for one stage, with frozen leaves set to zero. Checks
  the settings it reads (``where``: the stage's config key) and that the
  trainable rules cover every leaf of ``params`` (arrays or shapes).

  SGD weight decay is coupled L2 by default (``wd * param`` added to the
  gradient before momentum): that is what the paper's PyTorch
  ``SGD(momentum=0.9, weight_decay=5e-4)`` does, so "coupled" reproduces it.
  ``weight_decay_mode="decoupled"`` adds the decay after momentum (SGDW).
  ``name="adamw"`` is always decoupled.
  """
  check_optimizer(optimizer_config)
  check_schedule(stage, where)
  check_trainable_rules(where, stage.trainable)
  try:
    labels = label_params(params, stage.trainable)
  except ValueError as e:
    raise errors.UserError(f"{where}.trainable: {e}") from None
  lr = learning_rate_schedule(stage)
  wd = optimizer_config.weight_decay
  mode = optimizer_config.weight_decay_mode
  if optimizer_config.name == "sgd":
    momentum = (optax.trace(decay=optimizer_config.momentum)
                if optimizer_config.momentum else optax.identity())
    decay = optax.add_decayed_weights(wd)
    steps = [decay, momentum] if mode == "coupled" else [momentum, decay]
    tx = optax.chain(*steps, optax.scale_by_learning_rate(lr))
  else:
    tx = optax.adamw(lr, weight_decay=wd)
  return optax.partition({"train": tx, "freeze": optax.set_to_zero()}, labels)
