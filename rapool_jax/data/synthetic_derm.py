"""`synthetic_derm`: procedural dermoscopy-like images, no download needed.

The embedded default data set: a new user's first command trains on it. It
follows the feature contract shared by all our data sets (``image``, ``mask``,
``has_mask``, ``melanoma``, ``seborrheic_keratosis``, ``image_id``) plus
``has_disc`` and ``has_hair`` for analysis.

Generative recipe (one image, all sizes in units of the image side S):

1. Class: melanoma with p = 0.19, seborrheic keratosis (SK) with p = 0.15,
   otherwise a benign nevus. A latent "severity" z ~ N(1.6, 1) for melanomas,
   N(0, 1) for nevi, N(0.3, 1) for SK drives border irregularity and blur,
   size, pigment unevenness and the chance of each melanoma colour. Only z,
   never the label, enters the appearance, so the overlap of the z
   distributions caps the lesion-only AUC near 0.86: learnable, not trivial.
2. Skin: a skin tone, low-frequency brightness / redness variation and pixel
   noise.
3. Lesion: an irregular blob, r(theta) = R (1 + sum_k a_k cos(k theta + phi_k)),
   k = 1..10. Irregularity (a_k for k >= 3) and R grow with z; an elongation
   term (k = 2) is drawn for every class. The mask is exactly rho < r(theta).
   - nevus: light-to-medium brown, nearly uniform, darker centre.
   - melanoma: uneven pigment plus, each with a z-dependent probability, dark
     brown/black blotches (off-centre: asymmetry), a blue-grey veil, reddish
     areas and whitish regression.
   - SK (melanoma = 0): lighter, waxy tan with a fine texture and a few small
     bright "milia" dots.
4. Colour calibration disc (the paper's Fig. 2(d) failure mode): a saturated
   disc (mostly blue) near an edge or corner, always at least ~1.5 px away from
   the lesion mask. Its presence depends on the split:

       split              P(disc | melanoma)   P(disc | not melanoma)
       train                    0.02                 0.40
       validation, test         0.40                 0.10

   So in train the disc is a strong "benign" cue outside the lesion; in
   validation and test the correlation is reversed and a model that relies on
   it (e.g. GAP over the whole image) is punished, while a model pooling over
   the lesion only is unaffected.
5. Hairs (both classes, p = 0.55): dark thin quadratic Bezier curves anywhere.
6. Dermoscope optics: radial vignetting, in 35% of images a hard circular field
   of view (black corners), a global illumination gain and sensor noise.

Every example is seeded from (seed, split, index), so a build is byte-for-byte
reproducible and any example can be regenerated from its ``image_id`` with
`generate_example` (which also returns the disc mask).

``scripts/synthetic_sanity_report.py`` measures how separable the classes are,
and through which cues (its docstring has the figures).
"""

from __future__ import annotations

import dataclasses
import functools
import io
from typing import Any, NamedTuple

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

MELANOMA_SHARE = 0.19
SK_SHARE = 0.15
# (P(disc | melanoma), P(disc | not melanoma)) per split; see the docstring.
DISC_PROB = {
    "train": (0.02, 0.40),
    "validation": (0.40, 0.10),
    "test": (0.40, 0.10),
}
HAIR_PROB = 0.55
SPLITS = ("train", "validation", "test")

# Melanoma / benign severity means; their overlap sets the lesion difficulty.
_Z_MEAN = {"melanoma": 1.6, "nevus": 0.0, "sk": 0.3}

_MELANOMA_COLOURS = {
    # name: (RGB, z threshold for a 50% chance of appearing)
    "dark": ((45.0, 30.0, 25.0), 1.0),
    "blue_grey": ((100.0, 112.0, 140.0), 1.5),
    "red": ((175.0, 80.0, 75.0), 1.3),
    "white": ((215.0, 200.0, 195.0), 2.3),
}
_DISC_COLOURS = (
    # Blue first: the paper's Fig. 2(d) disc is blue.
    ((35.0, 75.0, 205.0), 0.6),
    ((80.0, 150.0, 225.0), 0.15),
    ((55.0, 165.0, 90.0), 0.15),
    ((215.0, 60.0, 150.0), 0.10),
)


# ----------------------------------------------------------------------------
# Rendering helpers.
# ----------------------------------------------------------------------------


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates, each ``[S, S]`` (y, x)."""
  c = np.arange(size, dtype=np.float64) + 0.5
  return np.meshgrid(c, c, indexing="ij")


@functools.lru_cache(maxsize=32)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
  """Linear interpolation from ``cells`` to ``size`` samples: ``[S, cells]``."""
  pos = (np.arange(size) + 0.5) / size * (cells - 1)
  i0 = np.minimum(np.floor(pos).astype(int), cells - 2)
  w = pos - i0
  m = np.zeros((size, cells))
  m[np.arange(size), i0] = 1.0 - w
  m[np.arange(size), i0 + 1] = w
  return m


def _smooth_field(rng: np.random.Generator, size: int, cells: int,
                  channels: int = 1) -> np.ndarray:
  """Smooth unit-variance-ish noise, ``[channels, S, S]``."""
  g = rng.standard_normal((channels, cells, cells))
  m = _interp_matrix(size, cells)
  return np.einsum("sa,cab,tb->cst", m, g, m)


def _lesion_radius(theta: np.ndarray, r0: float, amp: np.ndarray,
                   phase: np.ndarray) -> np.ndarray:
  """Boundary radius r(theta) of the Fourier blob, same shape as ``theta``."""
  k = np.arange(1, len(amp) + 1)
  pert = np.cos(theta[..., None] * k + phase) @ amp
  return r0 * np.maximum(1.0 + pert, 0.35)


class _Lesion(NamedTuple):
  """A Fourier-blob lesion: centre, mean radius, harmonics and polar map."""

  cy: float
  cx: float
  r0: float
  amp: np.ndarray  # [10] harmonic amplitudes a_k.
  phase: np.ndarray  # [10] harmonic phases phi_k.
  rho: np.ndarray  # [S, S] distance of each pixel from (cy, cx).
  r_lesion: np.ndarray  # [S, S] boundary radius r(theta) at each pixel.


def _lesion_at(size: int, cy: float, cx: float, r0: float, amp: np.ndarray,
               phase: np.ndarray) -> _Lesion:
  """The lesion centred at (cy, cx), with its polar map over the image."""
  yy, xx = _grid(size)
  dy, dx = yy - cy, xx - cx
  return _Lesion(cy, cx, r0, amp, phase, np.hypot(dy, dx),
                 _lesion_radius(np.arctan2(dy, dx), r0, amp, phase))


def _composite(img: np.ndarray, rgb: np.ndarray, alpha: np.ndarray) -> None:
  """Paints ``rgb`` (``[S, S, 3]`` or ``[3]``) over ``img`` ``[S, S, 3]``
  in place with opacity ``alpha`` ``[S, S]``."""
  img += (rgb - img) * alpha[..., None]


# ----------------------------------------------------------------------------
# The generator.
# ----------------------------------------------------------------------------


# The recipe steps, in the order `render_example` calls them. Each one draws
# from the example's generator, so their order and every draw inside them
# define the data set: reordering anything changes every example.


def _draw_class(rng: np.random.Generator) -> tuple[str, float]:
  """The class ("melanoma", "sk" or "nevus") and its latent severity z."""
  u = rng.random()
  kind = ("melanoma" if u < MELANOMA_SHARE else
          "sk" if u < MELANOMA_SHARE + SK_SHARE else "nevus")
  return kind, rng.normal(_Z_MEAN[kind], 1.0)


def _skin(rng: np.random.Generator, size: int) -> np.ndarray:
  """Skin background, float ``[S, S, 3]`` in 0..255 units."""
  tone = rng.uniform()
  skin = (np.array([235.0, 195.0, 172.0]) * (1 - tone) +
          np.array([190.0, 135.0, 105.0]) * tone + rng.normal(0, 5, 3))
  low = _smooth_field(rng, size, 4, 2)
  img = np.broadcast_to(skin, (size, size, 3)).copy()
  img *= (1 + 0.04 * low[0])[..., None]
  img[..., 0] += 6.0 * low[1]  # Blotchy erythema.
  img += (rng.normal(0, 3.0, (size, size, 1)) +
          rng.normal(0, 1.5, (size, size, 3)))
  return img


def _lesion_geometry(rng: np.random.Generator, size: int,
                     z: float) -> _Lesion:
  """An irregular blob near the centre; its size and irregularity grow with
  z."""
  r0 = size * np.clip(0.21 + 0.02 * z + 0.035 * rng.normal(), 0.12, 0.32)
  irr = np.clip(0.045 + 0.035 * z + 0.02 * rng.normal(), 0.01, 0.25)
  k = np.arange(1, 11)
  amp = irr * np.abs(rng.normal(size=10)) * k ** -0.8
  amp[0] *= 0.5
  amp[1] += rng.uniform(0, 0.15)  # Elongation: ellipses are benign too.
  phase = rng.uniform(0, 2 * np.pi, 10)
  cy, cx = size / 2.0 + np.clip(rng.normal(0, 0.06, 2), -0.12, 0.12) * size
  return _lesion_at(size, cy, cx, r0, amp, phase)


def _place_disc(rng: np.random.Generator, size: int, lesion: _Lesion,
                fov_radius: float):
  """Places the calibration disc clear of ``lesion``.

  Candidates are the 4 corners and 4 edge midpoints in random order, the disc
  pushed as far out as the image border / field of view allows. Returns
  ``(lesion, (cy, cx, radius), fallback)``: if the lesion left no room, it was
  nudged off-centre and shrunk until the disc fits, and ``fallback`` is True.
  """
  yy, xx = _grid(size)
  half = size / 2.0
  fallback = False
  while True:
    lesion_zone = lesion.rho < lesion.r_lesion + 1.5  # A gap: no contact.
    radius = size * rng.uniform(0.09, 0.14)
    angles = np.deg2rad(rng.permutation(8) * 45.0 + rng.uniform(-12, 12, 8))
    for shrink in (1.0, 0.8, 0.65):
      rd = max(radius * shrink, 0.06 * size, 2.0)
      for a in angles:
        ca, sa = np.cos(a), np.sin(a)
        # Largest distance d from the centre with the disc inside frame/FOV.
        lim = half - rd - 1.0
        d = min(lim / max(abs(ca), 1e-6), lim / max(abs(sa), 1e-6))
        d = min(d, fov_radius - rd - 1.0) * rng.uniform(0.9, 1.0)
        cy, cx = half + d * sa, half + d * ca
        if not np.any((np.hypot(yy - cy, xx - cx) < rd + 1.0) & lesion_zone):
          return lesion, (cy, cx, rd), fallback
    # Rare: a big lesion leaves no room. Nudge it off-centre, then shrink it.
    fallback = True
    ang = rng.uniform(0, 2 * np.pi)
    cy = np.clip(lesion.cy + 0.04 * size * np.sin(ang), 0.3 * size, 0.7 * size)
    cx = np.clip(lesion.cx + 0.04 * size * np.cos(ang), 0.3 * size, 0.7 * size)
    lesion = _lesion_at(size, cy, cx, lesion.r0 * 0.93, lesion.amp,
                        lesion.phase)


def _milia(rng: np.random.Generator, size: int, lesion: _Lesion) -> np.ndarray:
  """Coverage in [0, 1] of a few small bright dots inside the lesion,
  ``[S, S]``."""
  yy, xx = _grid(size)
  n_milia = rng.integers(2, 9)
  # sqrt: uniform over the inner 70% of the area, not bunched at the centre.
  mq = np.sqrt(rng.uniform(0, 0.7, n_milia))
  mt = rng.uniform(0, 2 * np.pi, n_milia)
  mr = _lesion_radius(mt, lesion.r0, lesion.amp, lesion.phase)
  my = lesion.cy + mq * mr * np.sin(mt)
  mx = lesion.cx + mq * mr * np.cos(mt)
  # Dot width in pixels scales with the image, with a floor for tiny images.
  sig = rng.uniform(0.5, 0.9, n_milia) * max(size / 64, 0.5)
  d2 = ((yy[None] - my[:, None, None]) ** 2 +
        (xx[None] - mx[:, None, None]) ** 2)
  return np.clip(np.sum(np.exp(-d2 / (2 * sig[:, None, None] ** 2)), 0), 0, 1)


def _sk_colour(rng: np.random.Generator, lesion: _Lesion, q: np.ndarray,
               texture: np.ndarray) -> np.ndarray:
  """Seborrheic keratosis: waxy tan with a fine texture and milia.

  ``q`` (rho / r(theta), clipped to [0, 1]) and ``texture`` (smooth noise)
  are ``[S, S]``; returns float ``[S, S, 3]``.
  """
  s = q.shape[0]
  t = rng.uniform()
  base = (np.array([200.0, 165.0, 120.0]) * (1 - t) +
          np.array([140.0, 105.0, 70.0]) * t)
  fine = _smooth_field(rng, s, max(s // 4, 4), 1)[0]
  rgb = base * (1 + 0.05 * texture + 0.09 * np.tanh(fine))[..., None]
  rgb = rgb * (1 - 0.06 * (1 - q))[..., None]
  _composite(rgb, np.array([245.0, 238.0, 212.0]),  # Milia.
             0.85 * _milia(rng, s, lesion))
  return rgb


def _nevus_melanoma_colour(rng: np.random.Generator, lesion: _Lesion,
                           q: np.ndarray, fields: np.ndarray, z: float,
                           sev: float) -> np.ndarray:
  """Brown pigment, darker with z, plus z-dependent melanoma colour patches.

  ``q`` is ``[S, S]`` (see `_sk_colour`); ``fields`` ``[>=5, S, S]`` smooth
  noise: the unevenness, then one field per `_MELANOMA_COLOURS` patch.
  Returns float ``[S, S, 3]``.
  """
  yy, xx = _grid(q.shape[0])
  t = np.clip(rng.uniform() + 0.15 * z, 0, 1)
  base = (np.array([170.0, 120.0, 85.0]) * (1 - t) +
          np.array([95.0, 60.0, 40.0]) * t)
  uneven = 0.04 + 0.12 * sev
  rgb = base * (1 + uneven * fields[0])[..., None]
  rgb = rgb * (1 - 0.12 * (1 - q))[..., None]
  # Off-centre gradient: melanoma colour patches sit asymmetrically.
  ga = rng.uniform(0, 2 * np.pi)
  grad = ((yy - lesion.cy) * np.sin(ga) +
          (xx - lesion.cx) * np.cos(ga)) / lesion.r0
  for i, (colour, z50) in enumerate(_MELANOMA_COLOURS.values()):
    if rng.random() < _sigmoid(1.4 * (z - z50)):
      bias = rng.uniform(-0.8, 0.4)
      w = _sigmoid((fields[i + 1] + rng.uniform(0, 1) * grad + bias) / 0.25)
      opacity = rng.uniform(0.55, 0.9)
      _composite(rgb, np.array(colour), opacity * w)
  return rgb


def _lesion_layer(rng: np.random.Generator, lesion: _Lesion, kind: str,
                  z: float) -> tuple[np.ndarray, np.ndarray]:
  """Lesion colour ``[S, S, 3]`` and opacity ``[S, S]`` (soft edge)."""
  s = lesion.rho.shape[0]
  q = np.clip(lesion.rho / lesion.r_lesion, 0, 1)  # 0 centre, 1 border.
  sev = _sigmoid(z - 1.0)  # Severity in (0, 1); never the label itself.
  # Edge width in px: severe lesions get blurrier borders.
  edge = rng.uniform(0.6, 1.0) + rng.uniform(0, 1.5) * sev
  alpha = np.clip((lesion.r_lesion - lesion.rho) / edge + 0.5, 0, 1)
  fields = _smooth_field(rng, s, 5, 6)
  if kind == "sk":
    rgb = _sk_colour(rng, lesion, q, fields[0])
  else:
    rgb = _nevus_melanoma_colour(rng, lesion, q, fields, z, sev)
  rgb += rng.normal(0, 2.0 + 3.0 * sev, (s, s, 3))
  opacity = rng.uniform(0.75, 0.95)
  return rgb, opacity * alpha


def _disc_layer(rng: np.random.Generator, size: int,
                disc: tuple[float, float, float]):
  """Calibration disc at ``disc`` = (cy, cx, radius): colour ``[S, S, 3]``
  and anti-aliased coverage ``[S, S]`` (0 off the disc)."""
  dcy, dcx, rd = disc
  yy, xx = _grid(size)
  d = np.hypot(yy - dcy, xx - dcx)
  colours, probs = zip(*_DISC_COLOURS)
  colour = np.array(colours[rng.choice(len(colours), p=probs)])
  colour = colour + rng.normal(0, 8, 3)
  shade = 1.08 - 0.18 * (d / rd) - 0.35 * (d > 0.82 * rd)  # Dark rim.
  return colour * shade[..., None], np.clip(rd + 0.5 - d, 0, 1)


def _hair_layer(rng: np.random.Generator, size: int, n: int):
  """``n`` dark hairs (quadratic Bezier curves, bilinear point splats):
  colour ``[3]`` and coverage ``[S, S]``."""
  acc = np.zeros(size * size + 1)
  step = 0.3  # px between splatted points
  for _ in range(n):
    p0 = rng.uniform(-0.1, 1.1, 2) * size
    ang = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.3, 1.2) * size
    p2 = p0 + length * np.array([np.sin(ang), np.cos(ang)])
    p1 = (p0 + p2) / 2 + rng.normal(0, 0.2, 2) * length
    t = np.linspace(0, 1, int(length * 1.3 / step) + 2)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2 - 0.5
    width = rng.uniform(0.5, 1.1)
    i0 = np.floor(pts).astype(int)
    f = pts - i0
    for oy, ox in ((0, 0), (0, 1), (1, 0), (1, 1)):
      iy, ix = i0[:, 0] + oy, i0[:, 1] + ox
      w = (f[:, 0] if oy else 1 - f[:, 0]) * (f[:, 1] if ox else 1 - f[:, 1])
      ok = (iy >= 0) & (iy < size) & (ix >= 0) & (ix < size)
      # Out-of-frame points go to the dummy last bin.
      idx = np.where(ok, iy * size + ix, size * size)
      acc += np.bincount(idx, weights=w * width * step * 1.6,
                         minlength=size * size + 1)
  cover = np.clip(acc[:-1].reshape(size, size), 0.0, 1.0)
  cover = cover * rng.uniform(0.7, 0.95)
  return np.array([40.0, 30.0, 25.0]) + rng.normal(0, 8, 3), cover


def _dermoscope_optics(rng: np.random.Generator, img: np.ndarray,
                       fov_radius: float) -> np.ndarray:
  """Vignetting, the optional circular field of view (``fov_radius`` <
  S), illumination gain and sensor noise. ``img`` float ``[S, S, 3]`` may be
  modified in place; use the returned ``[S, S, 3]``."""
  s = img.shape[0]
  half = s / 2.0
  yy, xx = _grid(s)
  rn = np.hypot(yy - half, xx - half) / (half * np.sqrt(2))
  img *= (1 - rng.uniform(0.15, 0.45) * rn ** rng.uniform(2, 4))[..., None]
  if fov_radius < s:
    fov = np.clip(fov_radius - np.hypot(yy - half, xx - half) + 0.5, 0, 1)
    img = img * fov[..., None] + 8.0 * (1 - fov[..., None])
  img *= rng.uniform(0.88, 1.08) * (1 + rng.normal(0, 0.03, 3))
  img += rng.normal(0, 2.0, img.shape)
  return img


def render_example(rng: np.random.Generator, split: str,
                   image_size: int = 64) -> dict[str, Any]:
  """Draws one example.

  Returns a dict with ``image`` uint8 ``[S, S, 3]``, ``mask`` uint8
  ``[S, S, 1]`` (0/255), ``disc_mask`` bool ``[S, S]``, ``melanoma`` and
  ``seborrheic_keratosis`` (int 0/1), ``has_disc``, ``has_hair`` (bool) and
  ``disc_fallback`` (bool: the lesion had to be moved/shrunk to make room for
  the disc; 0 of 3000 examples at 64 px).
  """
  s = image_size
  kind, z = _draw_class(rng)
  is_mel = kind == "melanoma"
  # The label, not z, sets the disc odds: that is the shortcut under test.
  has_disc = rng.random() < DISC_PROB[split][0 if is_mel else 1]
  n_hairs = 1 + rng.poisson(3) if rng.random() < HAIR_PROB else 0
  fov_radius = s * rng.uniform(0.62, 0.72) if rng.random() < 0.35 else s

  img = _skin(rng, s)
  lesion = _lesion_geometry(rng, s, z)
  disc_mask, disc_fallback = np.zeros((s, s), bool), False
  if has_disc:
    lesion, disc, disc_fallback = _place_disc(rng, s, lesion, fov_radius)
  _composite(img, *_lesion_layer(rng, lesion, kind, z))
  if has_disc:
    disc_rgb, disc_alpha = _disc_layer(rng, s, disc)
    disc_mask = disc_alpha > 0
    _composite(img, disc_rgb, disc_alpha)
  if n_hairs:
    _composite(img, *_hair_layer(rng, s, n_hairs))
  img = _dermoscope_optics(rng, img, fov_radius)

  inside = lesion.rho < lesion.r_lesion  # Exactly the blob, not its soft edge.
  return {
      "image": np.clip(np.round(img), 0, 255).astype(np.uint8),
      "mask": (inside[..., None] * 255).astype(np.uint8),
      "disc_mask": disc_mask,
      "melanoma": int(is_mel),
      "seborrheic_keratosis": int(kind == "sk"),
      "has_disc": bool(has_disc),
      "has_hair": bool(n_hairs),
      "disc_fallback": disc_fallback,
  }


def generate_example(split: str, index: int, image_size: int = 64,
                     seed: int = 0) -> dict[str, Any]:
  """Example ``index`` of ``split``, seeded from (seed, split, index):
  `render_example` plus ``image_id``."""
  rng = np.random.default_rng(
      np.random.SeedSequence([seed, SPLITS.index(split), index]))
  return {**render_example(rng, split, image_size),
          "image_id": f"SYN_{split}_{index:07d}"}


def generate_examples(split: str, num_examples: int, image_size: int = 64,
                      seed: int = 0, start: int = 0) -> dict[str, np.ndarray]:
  """Examples ``start .. start + num_examples - 1`` stacked, without TFDS.

  Returns ``image`` ``[N, S, S, 3]`` uint8, ``mask`` ``[N, S, S, 1]`` uint8,
  ``disc_mask`` ``[N, S, S]`` bool and ``[N]`` arrays for the scalar fields.
  Identical to what the TFDS build stores for the same (split, index, seed).
  """
  exs = [generate_example(split, i, image_size, seed)
         for i in range(start, start + num_examples)]
  return {k: np.stack([e[k] for e in exs]) for k in exs[0]}


# ----------------------------------------------------------------------------
# TFDS builder.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class SyntheticDermConfig(tfds.core.BuilderConfig):
  """Image side, examples per split and seed; ``name`` is derived from them."""

  name: str = ""
  image_size: int = 64
  num_train: int = 1200
  num_validation: int = 300
  num_test: int = 600
  seed: int = 0

  def __post_init__(self):
    self.name = (f"s{self.image_size}_tr{self.num_train}_va"
                 f"{self.num_validation}_te{self.num_test}_seed{self.seed}")
    self.description = self.description or (
        f"{self.image_size}x{self.image_size} px, {self.num_train}/"
        f"{self.num_validation}/{self.num_test} examples, seed {self.seed}.")


class SyntheticDerm(tfds.core.GeneratorBasedBuilder):
  """Procedural dermoscopy-like images with a train/test disc shortcut shift."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [SyntheticDermConfig()]
  # TFDS's own `code_path` lookup needs `importlib_resources`, which nothing
  # installs on Python >= 3.11 for a builder defined inside a package. It is
  # only used to find a checksums file; there is none.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    s, f = self.builder_config.image_size, tfds.features
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, features=f.FeaturesDict({
            "image": f.Image(shape=(s, s, 3), encoding_format="png"),
            "mask": f.Image(shape=(s, s, 1), encoding_format="png"),
            "has_mask": f.Scalar(np.bool_), "melanoma": f.Scalar(np.int64),
            "seborrheic_keratosis": f.Scalar(np.int64),
            "image_id": f.Text(), "has_disc": f.Scalar(np.bool_),
            "has_hair": f.Scalar(np.bool_)}))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split):
    cfg = self.builder_config
    for i in range(getattr(cfg, f"num_{split}")):
      ex = generate_example(split, i, cfg.image_size, cfg.seed)
      # PNG bytes, not arrays: TFDS encodes numpy images with TensorFlow.
      yield ex["image_id"], {
          "image": _png(ex["image"]), "mask": _png(ex["mask"][..., 0]),
          "has_mask": True, **{k: ex[k] for k in (
              "melanoma", "seborrheic_keratosis", "image_id", "has_disc",
              "has_hair")}}


def _png(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def make_builder(data_dir, image_size: int = 64, num_train: int = 1200,
                 num_validation: int = 300, num_test: int = 600,
                 seed: int = 0) -> SyntheticDerm:
  """An array_record `SyntheticDerm`; then call ``download_and_prepare()``."""
  cfg = SyntheticDermConfig(image_size=image_size, num_train=num_train,
                            num_validation=num_validation, num_test=num_test,
                            seed=seed)
  # TFDS refuses a new config object that shares a registered config's name.
  registered = {c.name for c in SyntheticDerm.BUILDER_CONFIGS}
  config = cfg.name if cfg.name in registered else cfg
  return SyntheticDerm(data_dir=data_dir, config=config,
                       file_format="array_record")
