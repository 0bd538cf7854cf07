"""`isic2017`: the ISIC 2017 challenge data, built from the official files.

The TFDS ``manual_dir`` holds the official release (README), each file as the
zip or the folder it extracts to:

    ISIC-2017_{Training,Validation,Test_v2}_Data.zip   images ISIC_XXXXXXX.jpg
        (+ ISIC_XXXXXXX_superpixels.png and ..._Data_metadata.csv, not images)
    ISIC-2017_{Training,Validation,Test_v2}_Part1_GroundTruth.zip
        lesion masks ISIC_XXXXXXX_segmentation.png, 0/255, same size as image
    ISIC-2017_{Training,Validation,Test_v2}_Part3_GroundTruth.csv
        image_id,melanoma,seborrheic_keratosis (floats 0.0/1.0)

Splits: train (required), validation and test, each built if its files are
there. Masks are required for train unless ``require_train_masks=False``
(elsewhere, absent: ``has_mask`` False, mask zero). Stored resized to S x S,
aspect squashed as in the paper: ``image`` [S, S, 3] uint8 (PNG), ``mask``
[S, S, 1] 0/255 (area-resized, > 127), ``has_mask``, ``melanoma``,
``seborrheic_keratosis`` (0/1), ``image_id``, ``age`` (-1 unknown), ``sex``
('' unknown).

A build records its source files' fingerprints (`source_files`); `prepare`
rebuilds, saying what changed, when the folder no longer matches. Bad input
raises `ISICDataError` with a one-line message that starts with the file.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import re
import zipfile
from typing import Any

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from rapool_jax import errors

SPLITS = {"train": "Training", "validation": "Validation", "test": "Test_v2"}
LABEL_COLUMNS = ("image_id", "melanoma", "seborrheic_keratosis")
METADATA_COLUMNS = ("image_id", "age_approximate", "sex")

_IMAGE_RE = re.compile(r"^(ISIC_\d{7})\.(jpe?g|png)$", re.IGNORECASE)
_MASK_RE = re.compile(r"^(ISIC_\d{7})_segmentation\.png$", re.IGNORECASE)
_METADATA_RE = re.compile(r"_metadata\.csv$", re.IGNORECASE)
_HEAD_TAIL = 16 * 1024  # A folder's file is fingerprinted by its two ends.
# PIL errors for unreadable, truncated or absurdly large images.
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError,
                 Image.DecompressionBombError)


class ISICDataError(errors.UserError):
  """Bad or missing ISIC input; the one-line message starts with the file."""


class MissingMasksError(ISICDataError):
  """The training masks are required but absent."""


def _error(where: Any, message: str, cls=ISICDataError) -> ISICDataError:
  return cls(" ".join(f"{where}: {message}".split()))


def _brief(e: Exception) -> str:
  return " ".join(str(e).split())


def data_name(split: str) -> str:
  return f"ISIC-2017_{SPLITS[split]}_Data"


def masks_name(split: str) -> str:
  return f"ISIC-2017_{SPLITS[split]}_Part1_GroundTruth"


def labels_name(split: str) -> str:
  return f"ISIC-2017_{SPLITS[split]}_Part3_GroundTruth.csv"


def expected_files(split: str) -> list[str]:
  """The official file names one split is built from."""
  return [f"{data_name(split)}.zip", f"{masks_name(split)}.zip",
          labels_name(split)]


_EXPECTED = (f"expected {', '.join(expected_files('train'))} (each zip or its "
             "extracted folder; the masks zip is needed where lesion masks "
             "are trained on), optionally the same for Validation and Test_v2")


# Sources: one official zip, or the folder it was extracted to.


def _base(member: str) -> str:
  return member.replace("\\", "/").rsplit("/", 1)[-1]


def _is_isic_file(member: str) -> bool:
  """An image, mask or metadata CSV; not macOS resource forks or strays."""
  base = _base(member)
  return (not base.startswith("._") and "__MACOSX" not in member and any(
      r.search(base) for r in (_IMAGE_RE, _MASK_RE, _METADATA_RE)))


def _walk(path: str) -> list[str]:
  """Every ISIC file under ``path``, folders and files in sorted order."""
  found = []
  for root, dirs, files in os.walk(path):
    dirs.sort()
    found.extend(os.path.join(root, f) for f in sorted(files))
  return [f for f in found if _is_isic_file(os.path.relpath(f, path))]


def _zip_members(path: str) -> list[zipfile.ZipInfo]:
  """The ISIC members of a zip."""
  try:
    with zipfile.ZipFile(path) as zf:
      return [i for i in zf.infolist()
              if not i.is_dir() and _is_isic_file(i.filename)]
  except (zipfile.BadZipFile, OSError) as e:
    raise _error(path, f"not a readable zip: truncated or corrupt "
                 f"({_brief(e)}); download it again") from None


def _read_file(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise _error(path, f"cannot be read ({_brief(e)})") from None


class _Source:
  """The ISIC files of one zip or folder, by base name (any nesting depth)."""

  def __init__(self, path: str):
    self.path, self.is_zip = path, os.path.isfile(path)
    self._zip: zipfile.ZipFile | None = None
    self.files: dict[str, str] = {}  # base name -> member name or file path
    for member in ([i.filename for i in _zip_members(path)] if self.is_zip
                   else _walk(path)):
      if (first := self.files.get(base := _base(member))) is not None:
        raise _error(self.describe(member),
                     f"duplicate of {first}; each file must appear once")
      self.files[base] = member

  def read(self, member: str) -> bytes:
    if not self.is_zip:
      return _read_file(member)
    try:
      if self._zip is None:
        self._zip = zipfile.ZipFile(self.path)  # Kept open: one per split.
      return self._zip.read(member)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
      raise _error(self.describe(member),
                   f"cannot be read ({_brief(e)})") from None

  def describe(self, member: str) -> str:
    """``archive.zip:member`` for zips, the file path for folders."""
    return f"{self.path}:{member}" if self.is_zip else member

  def matching(self, regex: re.Pattern) -> list[tuple[str, str]]:
    """``(image_id, member)`` of the files whose base name ``regex`` matches."""
    return [(m.group(1), member) for base, member in self.files.items()
            if (m := regex.match(base))]


def _source_path(manual_dir: str, stem: str) -> str | None:
  """``stem.zip`` (preferred: the complete official file), else the folder."""
  if os.path.isfile(path := os.path.join(manual_dir, f"{stem}.zip")):
    return path
  return path[:-4] if os.path.isdir(path[:-4]) else None


def _find_source(manual_dir: str, stem: str) -> _Source | None:
  path = _source_path(manual_dir, stem)
  return None if path is None else _Source(path)


def _missing(manual_dir: str, stem: str) -> str:
  return f"{os.path.join(manual_dir, stem)}.zip (or folder {stem}/)"


# Provenance: what a build was made from, compared on every later run.


def _digest(value: Any) -> str:
  return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def _file_digest(path: str, whole: bool) -> str:
  """sha256 of a whole file, or of its first and last 16 KiB."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    if whole or os.path.getsize(path) <= 2 * _HEAD_TAIL:
      h.update(f.read())
    else:
      h.update(f.read(_HEAD_TAIL))
      f.seek(-_HEAD_TAIL, os.SEEK_END)
      h.update(f.read())
  return h.hexdigest()[:16]


def _fingerprint(path: str) -> tuple[int, str]:
  """``(bytes, digest)`` of a zip (its central directory: the ISIC members'
  names, sizes and CRC-32s) or a folder (its ISIC files' relative paths,
  sizes and ends); nothing is decompressed or read whole."""
  if os.path.isfile(path):
    return os.path.getsize(path), _digest(sorted(
        (i.filename, i.file_size, i.CRC) for i in _zip_members(path)))
  entries = [(os.path.relpath(f, path), os.path.getsize(f),
              _file_digest(f, whole=False)) for f in _walk(path)]
  return sum(e[1] for e in entries), _digest(entries)


def source_files(manual_dir: str) -> dict[str, dict[str, Any]]:
  """``{name: {"size": bytes, "fingerprint": hex}}`` of every official file a
  build of ``manual_dir`` reads (names relative to it; folders end in /).
  Cheap: zips' central directories, folders' file ends, CSVs whole."""
  files = {}
  for split in SPLITS:
    for stem in (data_name(split), masks_name(split)):
      if (path := _source_path(manual_dir, stem)) is not None:
        size, digest = _fingerprint(path)
        name = f"{stem}.zip" if path.endswith(".zip") else f"{stem}/"
        files[name] = {"size": size, "fingerprint": digest}
    for name in (labels_name(split), f"{data_name(split)}_metadata.csv"):
      if os.path.isfile(path := os.path.join(manual_dir, name)):
        files[name] = {"size": os.path.getsize(path),
                       "fingerprint": _file_digest(path, whole=True)}
  return files


def source_difference(built: dict[str, Any], now: dict[str, Any]) -> str:
  """How two ``source_files`` records differ, on one line ('' if equal)."""
  diffs = []
  for name in sorted(built.keys() | now.keys()):
    old, new = built.get(name), now.get(name)
    if old is None or new is None:
      diffs.append(f"{name} {'added' if old is None else 'removed'}")
    elif old["size"] != new["size"]:
      diffs.append(f"{name} {old['size']} -> {new['size']} bytes")
    elif old != new:
      diffs.append(f"{name} content changed")
  return "; ".join(diffs)


# CSVs.


def _read_csv(data: bytes, where: str, columns: tuple[str, ...]
              ) -> dict[str, tuple[int, dict[str, str]]]:
  """Rows by image_id: ``{id: (line number, row)}``; checks the header."""
  try:
    reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
  except UnicodeDecodeError as e:
    raise _error(where, f"not a UTF-8 CSV ({e})") from None
  found = [c.strip() for c in (reader.fieldnames or [])]
  if (missing := [c for c in columns if c not in found]):
    raise _error(where, f"missing column(s) {', '.join(missing)}; expected "
                 f"columns {', '.join(columns)}; found "
                 f"{', '.join(found) if found else 'no header'}")
  reader.fieldnames = found
  rows = {}
  for row in reader:
    if not (image_id := (row["image_id"] or "").strip()):
      continue  # Blank trailing lines.
    if image_id in rows:
      raise _error(where, f"line {reader.line_num}: duplicate row for "
                   f"{image_id} (first on line {rows[image_id][0]})")
    rows[image_id] = (reader.line_num, row)
  return rows


def _read_labels(path: str) -> dict[str, tuple[int, int, int]]:
  """``{image_id: (line, melanoma, seborrheic_keratosis)}`` from Part3 CSV."""
  labels = {}
  for image_id, (line, row) in _read_csv(_read_file(path), path,
                                         LABEL_COLUMNS).items():
    values = []
    for column in LABEL_COLUMNS[1:]:
      try:
        values.append({0.0: 0, 1.0: 1}[float(row[column])])
      except (TypeError, ValueError, KeyError):
        raise _error(path, f"line {line}: {column}={row[column]!r} for "
                     f"{image_id} is not 0 or 1") from None
    labels[image_id] = (line, *values)
  return labels


def _read_metadata(source: _Source, manual_dir: str,
                   split: str) -> dict[str, tuple[float, str]]:
  """``{image_id: (age, sex)}``; empty when there is no metadata CSV."""
  members = sorted(m for b, m in source.files.items() if _METADATA_RE.search(b))
  path = os.path.join(manual_dir, f"{data_name(split)}_metadata.csv")
  if members:
    where, data = source.describe(members[0]), source.read(members[0])
  elif os.path.isfile(path):
    where, data = path, _read_file(path)
  else:
    return {}
  metadata = {}
  for image_id, (_, row) in _read_csv(data, where, METADATA_COLUMNS).items():
    try:
      age = float(row["age_approximate"])
    except (TypeError, ValueError):
      age = -1.0  # 'unknown' in the official files.
    sex = (row["sex"] or "").strip().lower()
    metadata[image_id] = (age, "" if sex == "unknown" else sex)
  return metadata


# The plan of one split: which files make which example, checked up front so
# that mismatched files fail before any image is decoded.


@dataclasses.dataclass
class _SplitPlan:
  images: _Source
  masks: _Source | None
  labels: dict[str, tuple[int, int, int]]
  metadata: dict[str, tuple[float, str]]
  image_members: dict[str, str]  # image_id -> member
  mask_members: dict[str, str]   # image_id -> member


def _more(items: list) -> str:
  return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def _find_sources(manual_dir: str, split: str, require_masks: bool):
  """``(images, labels path, masks)`` of a split; None when it is absent."""
  images = _find_source(manual_dir, data_name(split))
  labels = os.path.join(manual_dir, labels_name(split))
  if images is None and not os.path.isfile(labels):
    if split == "train":
      raise _error(manual_dir, "no ISIC 2017 training files; " + _EXPECTED)
    return None
  if images is None:
    raise _error(_missing(manual_dir, data_name(split)), f"not found; the "
                 f"{split} split needs it next to {labels_name(split)}")
  if not os.path.isfile(labels):
    raise _error(labels, f"not found; the {split} split needs it next to "
                 f"{os.path.basename(images.path)}")
  masks = _find_source(manual_dir, masks_name(split))
  if masks is None and require_masks:
    raise _error(_missing(manual_dir, masks_name(split)), "not found; the "
                 f"{split} split requires lesion masks (add the file to the "
                 "folder, or call prepare(..., require_train_masks=False) to "
                 "build without them)", MissingMasksError)
  return images, labels, masks


def _check_images(images: _Source, labels_path: str,
                  labels: dict) -> dict[str, str]:
  """``{image_id: member}``: one image per label row, one row per image."""
  members = {}
  for image_id, member in images.matching(_IMAGE_RE):
    if image_id in members:
      raise _error(images.describe(member), f"second image for {image_id} "
                   f"(also {members[image_id]})")
    members[image_id] = member
  if not members:
    raise _error(images.path, "contains no ISIC_XXXXXXX.jpg images")
  if (unlabelled := sorted(set(members) - set(labels))):
    raise _error(images.describe(members[unlabelled[0]]), "image has no label "
                 f"row in {labels_path}{_more(unlabelled)}")
  if (orphans := sorted(set(labels) - set(members), key=lambda i: labels[i])):
    raise _error(labels_path, f"line {labels[orphans[0]][0]}: label row for "
                 f"{orphans[0]} has no image in {images.path}{_more(orphans)}")
  return members


def _check_masks(masks: _Source, labels_path: str,
                 labels: dict) -> dict[str, str]:
  """``{image_id: member}``: exactly one mask per labelled image."""
  if not (members := dict(masks.matching(_MASK_RE))):
    raise _error(masks.path, "contains no ISIC_XXXXXXX_segmentation.png masks")
  if (stray := sorted(set(members) - set(labels))):
    raise _error(masks.describe(members[stray[0]]),
                 f"mask has no image or label row in {labels_path}")
  if (unmasked := sorted(set(labels) - set(members))):
    raise _error(masks.path, f"no mask {unmasked[0]}_segmentation.png for "
                 f"image {unmasked[0]}, while other images have masks"
                 f"{_more(unmasked)}")
  return members


def _plans(manual_dir: str, require_train_masks: bool) -> dict:
  """``{split: _SplitPlan}`` of the splits present; raises what a build
  would, before any image is read."""
  plans = {}
  for split in SPLITS:
    if (found := _find_sources(manual_dir, split,
                               require_train_masks and split == "train")):
      images, labels_path, masks = found
      labels = _read_labels(labels_path)
      image_members = _check_images(images, labels_path, labels)
      plans[split] = _SplitPlan(
          images, masks, labels, _read_metadata(images, manual_dir, split),
          image_members, {} if masks is None else _check_masks(
              masks, labels_path, labels))
  return plans


# Pixels.


def _decode(data: bytes, where: str, what: str, size: int, mode: str,
            resample: int, draft: int = 0) -> tuple[Image.Image, tuple[int, int]]:
  """``(image in ``mode``, resized to size x size, original (W, H))``. JPEGs
  are decoded at >= ``draft`` px (DCT-domain downscaling makes multi-megapixel
  originals cheap; a 2x margin leaves quality to the antialiased resize)."""
  try:
    image = Image.open(io.BytesIO(data))
    original = image.size
    if draft:
      image.draft("RGB", (draft, draft))
    image.load()  # Decodes: truncated data fails here.
  except Image.UnidentifiedImageError:
    formats = "JPEG or PNG" if what == "image" else "PNG"
    raise _error(where, f"unreadable or corrupt {what} (not a {formats} PIL "
                 "can identify)") from None
  except _IMAGE_ERRORS as e:
    raise _error(where, f"unreadable or corrupt {what} ({_brief(e)})") from None
  image = image.convert(mode)
  if image.size != (size, size):
    image = image.resize((size, size), resample)
  return image, original


def _png(image: Image.Image) -> bytes:
  buf = io.BytesIO()
  # PNG level 1: ~5x faster than PIL's default 6 for ~14% more bytes; the
  # encode dominated a 256 px build (56 s vs ~10 s for 2150 images).
  image.save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


# The builder.


@dataclasses.dataclass(kw_only=True)
class ISIC2017Config(tfds.core.BuilderConfig):
  """Stored image side S; ``name`` is derived (``size256``)."""

  name: str = ""
  image_size: int = 256

  def __post_init__(self):
    self.name = f"size{self.image_size}"
    self.description = self.description or (
        f"{self.image_size}x{self.image_size} px, PNG images.")


class Isic2017(tfds.core.GeneratorBasedBuilder):
  """ISIC 2017 (train / validation / test) from the official files."""

  name = "isic2017"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [ISIC2017Config()]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download the ISIC 2017 challenge files from "
      f"https://challenge.isic-archive.com/data/#2017 into one folder: "
      f"{_EXPECTED}.")
  # Nothing is downloaded, so no checksums file to look up; looking it up
  # needs `importlib_resources`, which a bare `etils` install lacks.
  url_infos = None

  def __init__(self, *, manual_dir: str | None = None,
               require_train_masks: bool = True, **kwargs):
    self._isic_manual_dir = manual_dir
    self._require_train_masks = require_train_masks
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    s, f = self.builder_config.image_size, tfds.features
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=f.FeaturesDict({
            "image": f.Image(shape=(s, s, 3), encoding_format="png"),
            "mask": f.Image(shape=(s, s, 1), encoding_format="png"),
            "has_mask": f.Scalar(np.bool_),
            "melanoma": f.Scalar(np.int64),
            "seborrheic_keratosis": f.Scalar(np.int64),
            "image_id": f.Text(), "age": f.Scalar(np.float32),
            "sex": f.Text()}),
        homepage="https://challenge.isic-archive.com/data/#2017",
        # Which splits had masks, and the source files; read by `prepare`.
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    # Not `dl_manager.manual_dir`: it raises a multi-line error for an empty
    # folder; the checks of `_plans` say which files are missing instead.
    del dl_manager
    manual_dir = self._isic_manual_dir
    if not manual_dir or not os.path.isdir(manual_dir):
      raise _error(manual_dir or "manual_dir", "no such folder; " + _EXPECTED)
    plans = _plans(manual_dir, self._require_train_masks)
    self.info.metadata["has_masks"] = {
        split: plan.masks is not None for split, plan in plans.items()}
    # Compared by `prepare` on every later run: a changed folder rebuilds.
    self.info.metadata["source"] = {
        "manual_dir": os.path.abspath(manual_dir),
        "files": source_files(manual_dir),
        "require_train_masks": self._require_train_masks}
    return {split: self._generate_examples(plan)
            for split, plan in plans.items()}

  def _generate_examples(self, plan: _SplitPlan):
    """``(image_id, features)`` of one split, sorted by id."""
    size = self.builder_config.image_size
    zero_mask = _png(Image.new("L", (size, size)))
    for image_id, member in sorted(plan.image_members.items()):
      where = plan.images.describe(member)
      image, original = _decode(plan.images.read(member), where, "image",
                                size, "RGB", Image.BICUBIC, draft=2 * size)
      mask = zero_mask
      if plan.masks is not None:
        m = plan.mask_members[image_id]
        m_where = plan.masks.describe(m)
        # Area average then threshold: the lesion keeps its area at any scale.
        mask, (w, h) = _decode(plan.masks.read(m), m_where, "mask", size, "L",
                               Image.BOX)
        if (w, h) != original:
          raise _error(m_where, f"mask is {w}x{h} (WxH) but its image {where} "
                       f"is {original[0]}x{original[1]}")
        mask = _png(mask.point(lambda v: 255 if v > 127 else 0))
      _, melanoma, keratosis = plan.labels[image_id]
      age, sex = plan.metadata.get(image_id, (-1.0, ""))
      # Encoded bytes, not arrays: TFDS encodes numpy images with TF.
      yield image_id, {
          "image": _png(image), "mask": mask,
          "has_mask": plan.masks is not None, "melanoma": melanoma,
          "seborrheic_keratosis": keratosis, "image_id": image_id,
          "age": np.float32(age), "sex": sex}


def _download_mode(builder: Isic2017, manual: str | None,
                   require_train_masks: bool):
  """Reuse a prepared build unless ``manual`` holds other files (printed)."""
  mode = tfds.download.GenerateMode
  if not builder.is_prepared() or manual is None:
    return mode.REUSE_DATASET_IF_EXISTS
  built = builder.info.metadata.get("source") or {}
  if not os.path.isdir(manual):
    print(f"{manual}: no such folder; reusing the data set at "
          f"{builder.data_dir}, built from "
          f"{built.get('manual_dir', 'an unrecorded folder')}", flush=True)
    return mode.REUSE_DATASET_IF_EXISTS
  reason = (source_difference(built["files"], source_files(manual)) if built
            else "it records no source files (an older build)")
  if not reason:
    return mode.REUSE_DATASET_IF_EXISTS
  _plans(manual, require_train_masks)  # The old build stays if these fail.
  print(f"rebuilding {builder.data_dir}: {manual} differs from the files it "
        f"was built from ({reason})", flush=True)
  return mode.FORCE_REDOWNLOAD


def prepare(data_dir, manual_dir, image_size: int = 256,
            require_train_masks: bool = True) -> Isic2017:
  """Builds the data set into ``data_dir`` unless built; returns the builder.

  A build is reused while ``manual_dir`` holds the files it recorded
  (`source_files`); otherwise the folder is checked and the data set rebuilt,
  with a line saying what changed. A ``manual_dir`` that is None or gone
  reuses the build (a line names its folder). TFDS writes into an
  ``incomplete.*`` folder renamed on success: no partial data set is left.
  """
  manual = None if manual_dir is None else os.path.expanduser(
      os.fspath(manual_dir))
  cfg = ISIC2017Config(image_size=image_size)
  # TFDS refuses a new config object that shares a registered config's name.
  registered = {c.name for c in Isic2017.BUILDER_CONFIGS}
  new = lambda: Isic2017(  # noqa: E731
      data_dir=os.fspath(data_dir), file_format="array_record",
      config=cfg.name if cfg.name in registered else cfg, manual_dir=manual,
      require_train_masks=require_train_masks)
  builder = new()
  mode = _download_mode(builder, manual, require_train_masks)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual, download_mode=mode,
      # No GCS lookup: it is a network call, and ISIC is not hosted there.
      try_download_gcs=False))
  if mode == tfds.download.GenerateMode.FORCE_REDOWNLOAD:
    builder = new()  # Reads the new build's metadata.
  if require_train_masks and not builder.info.metadata.get(
      "has_masks", {}).get("train", False):
    raise _error(builder.data_dir, "was built without training masks "
                 f"(require_train_masks=False); add {masks_name('train')}.zip "
                 f"to {manual_dir} and run again: the data set is then rebuilt",
                 MissingMasksError)
  return builder
