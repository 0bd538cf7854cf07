"""Trap sets (Bissoto et al., CVPR-W 2020): a synthetic artefact outside the
lesion whose presence goes with the label in training and against it on
held-out images.

At bias ``b`` a melanoma carries the artefact with probability ``(1 + b) / 2``
and any other lesion with ``(1 - b) / 2``: ``b = 0`` is no link, ``b = 1`` a
perfect shortcut. Held-out splits get the reversed link, so a model that reads
the artefact loses AUC there while one that reads the lesion does not.
Shares are exact per class (a seeded permutation picks which images), not
drawn image by image, so a bias level means the same on every seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rapool_jax import errors

KINDS = ("square", "ruler")
# Artefact centres lie on this ring (a share of the image side from the
# centre), so that 180-degree rotations and the 112-of-128 crop keep them.
RING = 0.32
SIDE = 0.14  # the artefact's side, as a share of the image side
SQUARE_RGB = (40, 90, 210)  # a saturated blue, like a calibration patch


def carrier_rates(bias: float, reverse: bool = False) -> tuple[float, float]:
  """``(melanoma, other)``: the share of each class that carries the artefact."""
  errors.check_range("config.data.trap.bias", bias, low=0, high=1)
  hi, lo = (1 + bias) / 2, (1 - bias) / 2
  return (lo, hi) if reverse else (hi, lo)


def carriers(labels, bias: float, seed: int, reverse: bool = False):
  """``[N]`` bool: which images carry the artefact; per class exactly
  ``round(rate * n)`` of them (``labels [N]``, 1 = melanoma)."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  out = np.zeros(len(labels), bool)
  for cls, rate in zip((1, 0), carrier_rates(bias, reverse)):
    rows = np.flatnonzero((labels == 1) == bool(cls))
    out[rng.permutation(rows)[:round(rate * len(rows))]] = True
  return out


def _stamp(kind: str, side: int) -> tuple[np.ndarray, np.ndarray]:
  """``(rgb [side, side, 3], alpha [side, side] bool)`` of one artefact."""
  rgb = np.zeros((side, side, 3), np.uint8)
  alpha = np.ones((side, side), bool)
  if kind == "square":
    rgb[:] = SQUARE_RGB
  else:  # a dark ruler bar with light tick marks
    bar = max(2, side // 4)
    alpha[:] = False
    alpha[:, :bar] = True
    rgb[:, :bar] = 25
    ticks = np.arange(0, side, max(2, side // 6))
    alpha[ticks, bar:2 * bar] = True
    rgb[ticks, :2 * bar] = 235
  return rgb, alpha


def place_artefact(image, mask, kind: str, angle: float) -> np.ndarray:
  """``image [S, S, 3]`` uint8 with the artefact on the ring at ``angle``
  (radians) moved to the free spot nearest it, never over the lesion
  (``mask [S, S]`` > 0)."""
  errors.check_choice("config.data.trap.kind", kind, KINDS)
  size = image.shape[0]
  side = max(3, round(SIDE * size))
  rgb, alpha = _stamp(kind, side)
  lesion = np.asarray(mask) > 0
  best = None
  for step in range(16):  # from `angle`, the first spot with the least lesion
    a = angle + 2 * np.pi * step / 16
    r0 = int(round(size / 2 + RING * size * np.sin(a) - side / 2))
    c0 = int(round(size / 2 + RING * size * np.cos(a) - side / 2))
    overlap = int(lesion[r0:r0 + side, c0:c0 + side][alpha].sum())
    if best is None or overlap < best[0]:
      best = (overlap, r0, c0)
  _, r0, c0 = best
  out = np.array(image, np.uint8, copy=True)
  draw = alpha & ~lesion[r0:r0 + side, c0:c0 + side]
  out[r0:r0 + side, c0:c0 + side][draw] = rgb[draw]
  return out


def apply(images, masks, labels, bias: float, kind: str, seed: int,
          reverse: bool = False):
  """``(images [N, S, S, 3], carried [N] bool)``: the carriers of
  ``carriers(...)`` with the artefact drawn at a seeded random angle."""
  carried = carriers(labels, bias, seed, reverse)
  angles = np.random.default_rng([seed, 1]).uniform(0, 2 * np.pi, len(labels))
  out = np.array(images, copy=True)
  for i in np.flatnonzero(carried):
    out[i] = place_artefact(images[i], masks[i], kind, angles[i])
  return out, carried


def check_settings(data_config) -> None:
  """``config.data.trap``: a known kind ("" = off), a bias in [0, 1]."""
  trap = data_config.trap
  errors.check_choice("config.data.trap.kind", trap.kind, ("",) + KINDS)
  carrier_rates(trap.bias)


def apply_to_splits(splits: dict, data_config) -> dict:
  """``{name: Split}`` with ``config.data.trap`` drawn in: the training and
  validation splits with the link, every other split with it reversed."""
  trap = data_config.get("trap")
  if not trap or not trap.kind:
    return splits
  with_link = {data_config.train_split, data_config.val_split}
  return {name: dataclasses.replace(split, images=apply(
      split.images, split.masks, split.labels, trap.bias, trap.kind,
      trap.seed, reverse=name not in with_link)[0])
          for name, split in splits.items()}
