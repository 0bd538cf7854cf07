"""Images with the lesion taken away, or the lesion alone (Bissoto et al.,
"(De)Constructing Bias on Skin Lesion Datasets", CVPR-W 2019).

Each version keeps one source of evidence, cut with the true mask:
``lesion_only`` keeps the lesion and fills the rest with the image's own
skin colour; ``background_only`` removes the lesion by inpainting it from the
surrounding skin (OpenCV, Telea), so that no flat patch tells a model where
the lesion was; ``bbox`` covers the lesion's bounding box with the skin
colour. A model that reads the lesion falls towards AUC 0.5 on
``background_only``; one that reads shortcuts around it does not.
"""

from __future__ import annotations

import cv2
import numpy as np

from rapool_jax import errors

VERSIONS = ("whole", "lesion_only", "background_only", "bbox")


def skin_colour(image, mask) -> np.ndarray:
  """``[3]`` uint8: the median colour outside the lesion (of the whole image
  where the mask covers it all)."""
  outside = image[~mask] if (~mask).any() else image.reshape(-1, 3)
  return np.median(outside.reshape(-1, 3), axis=0).astype(np.uint8)


def lesion_only(image, mask) -> np.ndarray:
  return np.where(mask[..., None], image, skin_colour(image, mask))


def background_only(image, mask) -> np.ndarray:
  """The lesion, grown by a margin of ~2% of the side so that its rim goes
  too, inpainted from the skin around it."""
  size = image.shape[0]
  grow = max(1, size // 48)
  hole = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8),
                    iterations=grow)
  return cv2.inpaint(np.ascontiguousarray(image), hole, max(3, size // 32),
                     cv2.INPAINT_TELEA)


def occlude_bbox(image, mask) -> np.ndarray:
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  out = np.array(image, copy=True)
  if len(rows):
    out[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = skin_colour(image, mask)
  return out


def check_version(version: str, masks_path) -> None:
  """``--disrupt``: a known version, and masks to cut with."""
  errors.check_choice("--disrupt", version, VERSIONS)
  if version != "whole" and not masks_path:
    raise errors.UserError(f"--disrupt={version} needs --masks DIR (the true "
                           "lesion masks to cut with)")


_MAKERS = {"whole": lambda image, mask: np.array(image, copy=True),
           "lesion_only": lesion_only, "background_only": background_only,
           "bbox": occlude_bbox}


def disrupt(images, masks, version: str) -> np.ndarray:
  """``images [N, S, S, 3]`` uint8 as ``version`` (one of ``VERSIONS``),
  cut by ``masks [N, S, S]`` (> 0 inside the lesion)."""
  errors.check_choice("--disrupt", version, VERSIONS)
  images, masks = np.asarray(images, np.uint8), np.asarray(masks) > 0
  if images.shape[:3] != masks.shape:
    raise errors.UserError(f"images {images.shape[1:3]} and masks "
                           f"{masks.shape[1:]} differ in size")
  return np.stack([_MAKERS[version](im, m) for im, m in zip(images, masks)])
