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


def path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def label_params(params, rules: Sequence[tuple[str, str]]):
  """Labels each leaf "train"/"freeze" by the first regex in ``rules`` matching its path.

  Raises:
    ValueError: a rule has an unknown label, or a parameter matches no rule.
  """
  compiled = []
  for pattern, label in rules:
    if label not in ("train", "freeze"):
      raise ValueError(f"trainable rule ({pattern!r}, {label!r}): label must be "
                       "'train' or 'freeze'")
    compiled.append((re.compile(pattern), label))

  uncovered = []

  def label_of(path, _):
    name = path_str(path)
    for regex, label in compiled:
      if regex.fullmatch(name):
        return label
    uncovered.append(name)
    return "freeze"

  labels = jax.tree_util.tree_map_with_path(label_of, params)
  if uncovered:
    raise ValueError(
        f"trainable rules {[r for r, _ in rules]} cover no rule for "
        f"{len(uncovered)} parameter(s), e.g. {uncovered[:3]}; add a catch-all "
        "rule such as ('.*', 'freeze')")
  return labels


SCHEDULES = ("step", "cosine", "constant")


def learning_rate_schedule(stage):
  """Schedule of one stage from its config (``lr``, ``schedule``, ...)."""
  if stage.schedule == "step":
    # Paper: lr divided by 10 every 2000 iterations.
    return optax.exponential_decay(
        stage.lr, transition_steps=stage.decay_every,
        decay_rate=stage.decay_factor, staircase=True)
  if stage.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, stage.lr, stage.get("warmup_steps", 0), max(stage.max_steps, 1))
  if stage.schedule == "constant":
    return optax.constant_schedule(stage.lr)
  raise ValueError(f"stage schedule {stage.schedule!r} is not one of "
                   f"{SCHEDULES}")


def make_optimizer(optimizer_config, stage, params):
  """optax transform for one stage, with frozen leaves set to zero.

  SGD weight decay is coupled L2 by default (``wd * param`` added to the
  gradient before momentum): that is what the paper's PyTorch
  ``SGD(momentum=0.9, weight_decay=5e-4)`` does, so "coupled" reproduces it.
  ``weight_decay_mode="decoupled"`` adds the decay after momentum (SGDW).
  ``name="adamw"`` is always decoupled.
  """
  lr = learning_rate_schedule(stage)
  wd = optimizer_config.weight_decay
  mode = optimizer_config.weight_decay_mode
  if mode not in ("coupled", "decoupled"):
    raise ValueError("optimizer.weight_decay_mode must be 'coupled' or "
                     f"'decoupled', got {mode!r}")
  if optimizer_config.name == "sgd":
    momentum = (optax.trace(decay=optimizer_config.momentum)
                if optimizer_config.momentum else optax.identity())
    decay = optax.add_decayed_weights(wd)
    steps = [decay, momentum] if mode == "coupled" else [momentum, decay]
    tx = optax.chain(*steps, optax.scale_by_learning_rate(lr))
  elif optimizer_config.name == "adamw":
    tx = optax.adamw(lr, weight_decay=wd)
  else:
    raise ValueError(f"optimizer.name {optimizer_config.name!r} is not "
                     "'sgd' or 'adamw'")
  labels = label_params(params, stage.trainable)
  return optax.partition({"train": tx, "freeze": optax.set_to_zero()}, labels)
