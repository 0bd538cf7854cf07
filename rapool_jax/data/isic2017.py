"""`isic2017`: the ISIC 2017 challenge data, built from the official files.

The user downloads the official release (https://challenge.isic-archive.com/
data/#2017) into one folder, the TFDS ``manual_dir``. Each file may be the zip
or the folder it extracts to:

    ISIC-2017_{Training,Validation,Test_v2}_Data.zip   images ISIC_XXXXXXX.jpg
        (+ ISIC_XXXXXXX_superpixels.png and ..._Data_metadata.csv, not images)
    ISIC-2017_{Training,Validation,Test_v2}_Part1_GroundTruth.zip
        lesion masks ISIC_XXXXXXX_segmentation.png, 0/255, same size as image
    ISIC-2017_{Training,Validation,Test_v2}_Part3_GroundTruth.csv
        image_id,melanoma,seborrheic_keratosis (floats 0.0/1.0)

Splits: train (Training, required), validation (Validation) and test (Test_v2);
a split whose files are all absent is not generated. Masks are required for
train unless ``require_train_masks=False``, and optional elsewhere (absent:
``has_mask`` False and an all-zero mask).

Images and masks are stored resized to S x S (aspect squashed, as the paper
does), so a full-resolution download builds once into a small data set. The
features follow the contract shared by all our data sets:

    image                 (S, S, 3) uint8 RGB, PNG (or JPEG q95, see config)
    mask                  (S, S, 1) uint8 0/255, area-resized then > 127
    has_mask              bool
    melanoma              int64 0/1
    seborrheic_keratosis  int64 0/1
    image_id              text, 'ISIC_0000000'
    age                   float32, -1 where unknown
    sex                   text, '' where unknown

Bad input raises `ISICDataError` with a one-line message that starts with the
file at fault.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import os
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

SPLITS = {"train": "Training", "validation": "Validation", "test": "Test_v2"}
LABEL_COLUMNS = ("image_id", "melanoma", "seborrheic_keratosis")
METADATA_COLUMNS = ("image_id", "age_approximate", "sex")

_IMAGE_RE = re.compile(r"^(ISIC_\d{7})\.(jpe?g|png)$", re.IGNORECASE)
_MASK_RE = re.compile(r"^(ISIC_\d{7})_segmentation\.png$", re.IGNORECASE)
_METADATA_RE = re.compile(r"_metadata\.csv$", re.IGNORECASE)
_ISIC_FILE_RES = (_IMAGE_RE, _MASK_RE, _METADATA_RE)
_JPEG_QUALITY = 95
# PIL errors for unreadable, truncated or absurdly large images.
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError,
                 Image.DecompressionBombError)


class ISICDataError(ValueError):
  """Bad or missing ISIC input; the one-line message starts with the file."""


class MissingMasksError(ISICDataError):
  """The training masks are required but absent."""


def _one_line(text: Any) -> str:
  return " ".join(str(text).split())


def _error(where: Any, message: str) -> ISICDataError:
  return ISICDataError(_one_line(f"{where}: {message}"))


# ----------------------------------------------------------------------------
# File names.
# ----------------------------------------------------------------------------


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


def _expected_listing() -> str:
  train = ", ".join(expected_files("train"))
  return (f"expected {train} (each zip or its extracted folder; the masks zip "
          "is needed where lesion masks are trained on), optionally the same "
          "for Validation and Test_v2")


# ----------------------------------------------------------------------------
# Sources: one official zip, or the folder it was extracted to.
# ----------------------------------------------------------------------------


class _Source:
  """The ISIC files of one zip or folder, by base name (any nesting depth)."""

  def __init__(self, path: str):
    self.path = path
    self.is_zip = os.path.isfile(path)
    self._zip: zipfile.ZipFile | None = None
    self.files: dict[str, str] = {}  # base name -> member name or file path
    duplicates: dict[str, list[str]] = {}
    for member in self._list():
      base = _base(member)
      if not _is_isic_file(member):
        continue
      if base in self.files:
        duplicates.setdefault(base, [self.files[base]]).append(member)
      self.files[base] = member
    if duplicates:
      base, members = sorted(duplicates.items())[0]
      raise _error(self.describe(members[1]),
                   f"duplicate of {members[0]}; each file must appear once")

  def _list(self) -> list[str]:
    if self.is_zip:
      try:
        with zipfile.ZipFile(self.path) as zf:
          return [i.filename for i in zf.infolist() if not i.is_dir()]
      except (zipfile.BadZipFile, OSError) as e:
        raise _error(self.path,
                     f"not a readable zip ({_one_line(e)})") from None
    found = []
    for root, dirs, files in os.walk(self.path):
      dirs.sort()
      found.extend(os.path.join(root, f) for f in sorted(files))
    return found

  def __enter__(self) -> _Source:
    if self.is_zip:
      self._zip = zipfile.ZipFile(self.path)
    return self

  def __exit__(self, *exc) -> None:
    if self._zip is not None:
      self._zip.close()
      self._zip = None

  def read(self, member: str) -> bytes:
    try:
      if self.is_zip:
        if self._zip is not None:
          return self._zip.read(member)
        with zipfile.ZipFile(self.path) as zf:
          return zf.read(member)
      with open(member, "rb") as f:
        return f.read()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
      raise _error(self.describe(member),
                   f"cannot be read ({_one_line(e)})") from None

  def describe(self, member: str) -> str:
    """``archive.zip:member`` for zips, the file path for folders."""
    return f"{self.path}:{member}" if self.is_zip else member


def _find_source(manual_dir: str, stem: str) -> _Source | None:
  """The zip ``stem.zip`` (preferred: the complete official file) or folder."""
  for path in (os.path.join(manual_dir, f"{stem}.zip"),
               os.path.join(manual_dir, stem)):
    if (os.path.isfile(path) if path.endswith(".zip") else os.path.isdir(path)):
      return _Source(path)
  return None


def _missing(manual_dir: str, stem: str) -> str:
  return f"{os.path.join(manual_dir, stem)}.zip (or folder {stem}/)"


def _base(member: str) -> str:
  return member.replace("\\", "/").rsplit("/", 1)[-1]


def _is_isic_file(member: str) -> bool:
  """An image, mask or metadata CSV. Finder / macOS zip tools add
  resource-fork twins of every file; other strays (.DS_Store, READMEs) are
  not read either."""
  base = _base(member)
  return (not base.startswith("._") and "__MACOSX" not in member
          and any(r.search(base) for r in _ISIC_FILE_RES))


# ----------------------------------------------------------------------------
# Provenance: what a build was made from, compared on every later run.
# ----------------------------------------------------------------------------

_HEAD_TAIL = 16 * 1024


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


def _zip_digest(path: str) -> str:
  """Digest of the ISIC members' names, sizes and CRC-32s: the zip's central
  directory, so nothing is decompressed."""
  try:
    with zipfile.ZipFile(path) as zf:
      members = sorted((i.filename, i.file_size, i.CRC) for i in zf.infolist()
                       if not i.is_dir() and _is_isic_file(i.filename))
  except (zipfile.BadZipFile, OSError) as e:
    raise _error(path, "not a readable zip: truncated or corrupt "
                 f"({_one_line(e)}); download it again") from None
  return _digest(members)


def _folder_digest(path: str) -> tuple[int, str]:
  """Total size and digest of a folder's ISIC files (path, size, ends)."""
  total, entries = 0, []
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      rel = os.path.relpath(full, path)
      if _is_isic_file(rel):
        size = os.path.getsize(full)
        total += size
        entries.append((rel, size, _file_digest(full, whole=False)))
  return total, _digest(entries)


def source_files(manual_dir: str) -> dict[str, dict[str, Any]]:
  """``{name: {"size": bytes, "fingerprint": hex}}`` of every official file a
  build of ``manual_dir`` reads (names relative to it; folders end in /).

  Cheap: a zip's central directory (member names, sizes, CRC-32s), a
  folder's file sizes and first and last 16 KiB, CSVs whole.
  """
  files = {}
  for split in SPLITS:
    for stem in (data_name(split), masks_name(split)):
      zip_path = os.path.join(manual_dir, f"{stem}.zip")
      folder = os.path.join(manual_dir, stem)
      if os.path.isfile(zip_path):
        files[f"{stem}.zip"] = {"size": os.path.getsize(zip_path),
                                "fingerprint": _zip_digest(zip_path)}
      elif os.path.isdir(folder):
        size, digest = _folder_digest(folder)
        files[f"{stem}/"] = {"size": size, "fingerprint": digest}
    for name in (labels_name(split), f"{data_name(split)}_metadata.csv"):
      path = os.path.join(manual_dir, name)
      if os.path.isfile(path):
        files[name] = {"size": os.path.getsize(path),
                       "fingerprint": _file_digest(path, whole=True)}
  return files


def source_difference(built: dict[str, Any], now: dict[str, Any]) -> str:
  """How two ``source_files`` records differ, on one line ('' if equal)."""
  diffs = []
  for name in sorted(built.keys() | now.keys()):
    old, new = built.get(name), now.get(name)
    if old == new:
      continue
    if old is None:
      diffs.append(f"{name} added")
    elif new is None:
      diffs.append(f"{name} removed")
    elif old["size"] != new["size"]:
      diffs.append(f"{name} {old['size']} -> {new['size']} bytes")
    else:
      diffs.append(f"{name} content changed")
  return "; ".join(diffs)


# ----------------------------------------------------------------------------
# CSVs.
# ----------------------------------------------------------------------------


def _read_csv(data: bytes, where: str, columns: tuple[str, ...]
              ) -> dict[str, tuple[int, dict[str, str]]]:
  """Rows by image_id: ``{id: (line number, row)}``; checks the header."""
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise _error(where, f"not a UTF-8 CSV ({e})") from None
  reader = csv.DictReader(io.StringIO(text))
  found = [c.strip() for c in (reader.fieldnames or [])]
  missing = [c for c in columns if c not in found]
  if missing:
    raise _error(where, f"missing column(s) {', '.join(missing)}; expected "
                 f"columns {', '.join(columns)}; found "
                 f"{', '.join(found) if found else 'no header'}")
  reader.fieldnames = found
  rows = {}
  for row in reader:
    image_id = (row["image_id"] or "").strip()
    if not image_id:
      continue  # Blank trailing lines.
    if image_id in rows:
      raise _error(where, f"line {reader.line_num}: duplicate row for "
                   f"{image_id} (first on line {rows[image_id][0]})")
    rows[image_id] = (reader.line_num, row)
  return rows


def _read_labels(path: str) -> dict[str, tuple[int, int, int]]:
  """``{image_id: (line, melanoma, seborrheic_keratosis)}`` from Part3 CSV."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise _error(path, f"cannot be read ({_one_line(e)})") from None
  labels = {}
  for image_id, (line, row) in _read_csv(data, path, LABEL_COLUMNS).items():
    values = []
    for column in LABEL_COLUMNS[1:]:
      try:
        value = float(row[column])
      except (TypeError, ValueError):
        value = None
      if value not in (0.0, 1.0):
        raise _error(path, f"line {line}: {column}={row[column]!r} for "
                     f"{image_id} is not 0 or 1")
      values.append(int(value))
    labels[image_id] = (line, *values)
  return labels


def _read_metadata(source: _Source, manual_dir: str,
                   split: str) -> dict[str, tuple[float, str]]:
  """``{image_id: (age, sex)}``; empty when there is no metadata CSV."""
  members = sorted(m for b, m in source.files.items() if _METADATA_RE.search(b))
  if members:
    where, data = source.describe(members[0]), source.read(members[0])
  else:
    path = os.path.join(manual_dir, f"{data_name(split)}_metadata.csv")
    if not os.path.isfile(path):
      return {}
    with open(path, "rb") as f:
      where, data = path, f.read()
  metadata = {}
  for image_id, (_, row) in _read_csv(data, where, METADATA_COLUMNS).items():
    try:
      age = float(row["age_approximate"])
    except (TypeError, ValueError):
      age = -1.0  # 'unknown' in the official files.
    sex = (row["sex"] or "").strip().lower()
    metadata[image_id] = (age, "" if sex == "unknown" else sex)
  return metadata


# ----------------------------------------------------------------------------
# The plan of one split: which files make which example, checked up front so
# that mismatched files fail before any image is decoded.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class _SplitPlan:
  split: str
  images: _Source
  masks: _Source | None
  labels: dict[str, tuple[int, int, int]]
  metadata: dict[str, tuple[float, str]]
  image_members: dict[str, str]  # image_id -> member
  mask_members: dict[str, str]   # image_id -> member


def _plan_split(manual_dir: str, split: str,
                require_masks: bool) -> _SplitPlan | None:
  """Checks one split's files; None when the split is absent altogether."""
  images = _find_source(manual_dir, data_name(split))
  labels_path = os.path.join(manual_dir, labels_name(split))
  has_labels = os.path.isfile(labels_path)
  if images is None and not has_labels:
    if split == "train":
      raise _error(manual_dir, "no ISIC 2017 training files; "
                   + _expected_listing())
    return None
  if images is None:
    raise _error(_missing(manual_dir, data_name(split)),
                 f"not found; the {split} split needs it next to "
                 f"{labels_name(split)}")
  if not has_labels:
    raise _error(labels_path, f"not found; the {split} split needs it next to "
                 f"{os.path.basename(images.path)}")
  masks = _find_source(manual_dir, masks_name(split))
  if masks is None and require_masks:
    raise MissingMasksError(_one_line(
        f"{_missing(manual_dir, masks_name(split))}: not found; the {split} "
        "split requires lesion masks (add the file to the folder, or call "
        "prepare(..., require_train_masks=False) to build without them)"))

  image_members = {}
  for base, member in images.files.items():
    if (m := _IMAGE_RE.match(base)):
      if m.group(1) in image_members:
        raise _error(images.describe(member), "second image for "
                     f"{m.group(1)} (also {image_members[m.group(1)]})")
      image_members[m.group(1)] = member
  if not image_members:
    raise _error(images.path, "contains no ISIC_XXXXXXX.jpg images")
  labels = _read_labels(labels_path)

  unlabelled = sorted(set(image_members) - set(labels))
  if unlabelled:
    more = f" (and {len(unlabelled) - 1} more)" if len(unlabelled) > 1 else ""
    raise _error(images.describe(image_members[unlabelled[0]]),
                 f"image has no label row in {labels_path}{more}")
  orphans = sorted(set(labels) - set(image_members), key=lambda i: labels[i][0])
  if orphans:
    more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
    raise _error(labels_path, f"line {labels[orphans[0]][0]}: label row for "
                 f"{orphans[0]} has no image in {images.path}{more}")

  mask_members = {}
  if masks is not None:
    for base, member in masks.files.items():
      if (m := _MASK_RE.match(base)):
        mask_members[m.group(1)] = member
    if not mask_members:
      raise _error(masks.path, "contains no ISIC_XXXXXXX_segmentation.png "
                   "masks")
    stray = sorted(set(mask_members) - set(labels))
    if stray:
      raise _error(masks.describe(mask_members[stray[0]]),
                   f"mask has no image or label row in {labels_path}")
    unmasked = sorted(set(labels) - set(mask_members))
    if unmasked:
      more = f" (and {len(unmasked) - 1} more)" if len(unmasked) > 1 else ""
      raise _error(masks.path, f"no mask {unmasked[0]}_segmentation.png for "
                   f"image {unmasked[0]}, while other images have masks{more}")

  return _SplitPlan(split=split, images=images, masks=masks, labels=labels,
                    metadata=_read_metadata(images, manual_dir, split),
                    image_members=image_members, mask_members=mask_members)


# ----------------------------------------------------------------------------
# Pixels.
# ----------------------------------------------------------------------------


def _load_image(data: bytes, where: str,
                size: int) -> tuple[Image.Image, tuple[int, int]]:
  """``(RGB image resized to size x size, original (W, H))``."""
  try:
    image = Image.open(io.BytesIO(data))
    original = image.size
    # JPEG DCT-domain downscaling makes multi-megapixel originals cheap; 2x
    # margin so the antialiased resize below, not the shortcut, sets quality.
    image.draft("RGB", (2 * size, 2 * size))
    image = image.convert("RGB")  # Decodes: truncated data fails here.
  except Image.UnidentifiedImageError:
    raise _error(where, "unreadable or corrupt image (not a JPEG or PNG "
                 "PIL can identify)") from None
  except _IMAGE_ERRORS as e:
    raise _error(where,
                 f"unreadable or corrupt image ({_one_line(e)})") from None
  if image.size != (size, size):
    image = image.resize((size, size), Image.BICUBIC)
  return image, original


def _load_mask(data: bytes, where: str, size: int, image_where: str,
               image_size: tuple[int, int]) -> np.ndarray:
  """(size, size) uint8 0/255 mask; must match its image's original size."""
  try:
    mask = Image.open(io.BytesIO(data))
    mask.load()
  except Image.UnidentifiedImageError:
    raise _error(where, "unreadable or corrupt mask (not a PNG PIL can "
                 "identify)") from None
  except _IMAGE_ERRORS as e:
    raise _error(where,
                 f"unreadable or corrupt mask ({_one_line(e)})") from None
  if mask.size != image_size:
    raise _error(where, f"mask is {mask.size[0]}x{mask.size[1]} (WxH) but its "
                 f"image {image_where} is {image_size[0]}x{image_size[1]}")
  mask = mask.convert("L")
  if mask.size != (size, size):
    # Area average then threshold: the lesion keeps its area at any scale.
    mask = mask.resize((size, size), Image.BOX)
  return np.where(np.asarray(mask) > 127, 255, 0).astype(np.uint8)


def _encode(image: Image.Image, fmt: str) -> bytes:
  buf = io.BytesIO()
  if fmt == "jpeg":
    image.save(buf, format="JPEG", quality=_JPEG_QUALITY)
  else:
    # Level 1: ~5x faster than PIL's default 6 for ~14% more bytes; the
    # encode dominated a 256 px build (56 s vs ~10 s for 2150 images).
    image.save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


# ----------------------------------------------------------------------------
# The builder.
# ----------------------------------------------------------------------------


def config_name(image_size: int, image_format: str = "png") -> str:
  return f"size{image_size}" + ("" if image_format == "png" else "_jpeg")


@dataclasses.dataclass(kw_only=True)
class ISIC2017Config(tfds.core.BuilderConfig):
  """Stored image side S and format; ``name`` is derived (``size256``)."""

  name: str = ""
  image_size: int = 256
  # PNG: lossless (about 76 KiB per 256 px image); JPEG q95: about 13 KiB but
  # a second lossy pass over already-JPEG originals.
  image_format: str = "png"

  def __post_init__(self):
    if self.image_format not in ("png", "jpeg"):
      raise ValueError(f"image_format={self.image_format!r}: choose 'png' or "
                       "'jpeg'")
    if self.image_size < 1:
      raise ValueError(f"image_size={self.image_size} must be positive")
    derived = config_name(self.image_size, self.image_format)
    if self.name and self.name != derived:
      raise ValueError(f"Config name {self.name!r} != derived {derived!r}.")
    self.name = derived
    if not self.description:
      self.description = (f"{self.image_size}x{self.image_size} px, "
                          f"{self.image_format.upper()} images.")


class Isic2017(tfds.core.GeneratorBasedBuilder):
  """ISIC 2017 (train / validation / test) from the official files."""

  name = "isic2017"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [ISIC2017Config()]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download the ISIC 2017 challenge files from "
      "https://challenge.isic-archive.com/data/#2017 into one folder: "
      + _expected_listing() + ".")
  # Nothing is downloaded, so no checksums file to look up; looking it up
  # needs `importlib_resources`, which a bare `etils` install lacks.
  url_infos = None

  def __init__(self, *, manual_dir: str | os.PathLike | None = None,
               require_train_masks: bool = True, **kwargs):
    """``manual_dir``, when given, wins over ``DownloadConfig.manual_dir``."""
    self._isic_manual_dir = manual_dir
    self._require_train_masks = require_train_masks
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(
                shape=(s, s, 3),
                encoding_format=self.builder_config.image_format),
            "mask": tfds.features.Image(shape=(s, s, 1),
                                        encoding_format="png"),
            "has_mask": tfds.features.Scalar(np.bool_),
            "melanoma": tfds.features.Scalar(np.int64),
            "seborrheic_keratosis": tfds.features.Scalar(np.int64),
            "image_id": tfds.features.Text(),
            "age": tfds.features.Scalar(np.float32),
            "sex": tfds.features.Text(),
        }),
        homepage="https://challenge.isic-archive.com/data/#2017",
        # Which splits had lesion masks; read back by `prepare`.
        metadata=tfds.core.MetadataDict(),
    )

  def _manual_dir(self, dl_manager) -> str:
    if self._isic_manual_dir is not None:
      path = os.fspath(self._isic_manual_dir)
    else:
      # The public property raises a multi-line error for an empty folder;
      # the checks below say which files are missing instead.
      path = os.fspath(getattr(dl_manager, "_manual_dir", None) or "")
    path = os.path.expanduser(path)
    if not path or not os.path.isdir(path):
      raise _error(path or "manual_dir", "no such folder; "
                   + _expected_listing())
    return path

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir(dl_manager)
    plans = {}
    for split in SPLITS:
      require = self._require_train_masks and split == "train"
      plan = _plan_split(manual_dir, split, require)
      if plan is not None:
        plans[split] = plan
    self.info.metadata["has_masks"] = {
        split: plan.masks is not None for split, plan in plans.items()}
    # Compared by `prepare` on every later run: a changed folder rebuilds.
    self.info.metadata["source"] = {
        "manual_dir": os.path.abspath(manual_dir),
        "files": source_files(manual_dir),
        "require_train_masks": self._require_train_masks}
    return {split: self._generate_examples(plan)
            for split, plan in plans.items()}

  def _generate_examples(self, plan: _SplitPlan
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    size = self.builder_config.image_size
    fmt = self.builder_config.image_format
    zero_mask = _encode(Image.new("L", (size, size)), "png")
    masks = plan.masks
    with contextlib.ExitStack() as stack:
      # One open zip per split, not one per member read.
      for source in (plan.images, masks):
        if source is not None:
          stack.enter_context(source)
      for image_id in sorted(plan.image_members):
        member = plan.image_members[image_id]
        where = plan.images.describe(member)
        image, original = _load_image(plan.images.read(member), where, size)
        if masks is not None:
          mask_member = plan.mask_members[image_id]
          mask = _encode(Image.fromarray(_load_mask(
              masks.read(mask_member), masks.describe(mask_member), size,
              where, original)), "png")
        else:
          mask = zero_mask
        _, melanoma, keratosis = plan.labels[image_id]
        age, sex = plan.metadata.get(image_id, (-1.0, ""))
        # Encoded bytes, not arrays: TFDS encodes numpy images with TF.
        yield image_id, {
            "image": _encode(image, fmt),
            "mask": mask,
            "has_mask": masks is not None,
            "melanoma": melanoma,
            "seborrheic_keratosis": keratosis,
            "image_id": image_id,
            "age": np.float32(age),
            "sex": sex,
        }


def make_builder(data_dir, manual_dir, image_size: int = 256, *,
                 image_format: str = "png",
                 require_train_masks: bool = True) -> Isic2017:
  """An array_record `Isic2017` builder reading ``manual_dir``."""
  cfg = ISIC2017Config(image_size=image_size, image_format=image_format)
  # TFDS refuses a new config object that shares a registered config's name.
  registered = {c.name for c in Isic2017.BUILDER_CONFIGS}
  config = cfg.name if cfg.name in registered else cfg
  return Isic2017(
      data_dir=os.fspath(data_dir), config=config, file_format="array_record",
      manual_dir=None if manual_dir is None else os.fspath(manual_dir),
      require_train_masks=require_train_masks)


def _check_plans(manual_dir: str, require_train_masks: bool) -> None:
  """Raises what a build of ``manual_dir`` would, before any image is read."""
  for split in SPLITS:
    _plan_split(manual_dir, split, require_train_masks and split == "train")


def stale_reason(builder: Isic2017, manual_dir: str) -> str:
  """Why a prepared build does not match ``manual_dir`` ('' if it does)."""
  built = builder.info.metadata.get("source")
  if not built:
    return "it records no source files (an older build)"
  return source_difference(built["files"], source_files(manual_dir))


def prepare(data_dir, manual_dir, image_size: int = 256,
            require_train_masks: bool = True, *,
            image_format: str = "png") -> Isic2017:
  """Builds the data set into ``data_dir`` unless built; returns the builder.

  A finished build records its source files (`source_files`). It is reused
  while ``manual_dir`` holds the same files; otherwise the folder is checked
  and the data set rebuilt, with a line saying what changed. A
  ``manual_dir`` that is None or no longer exists reuses the build (a line
  names the folder it was built from). TFDS writes into a temporary
  ``incomplete.*`` folder renamed on success, so a failed or interrupted
  build never leaves a partial data set.
  """
  builder = make_builder(data_dir, manual_dir, image_size,
                         image_format=image_format,
                         require_train_masks=require_train_masks)
  manual = None if manual_dir is None else os.path.expanduser(
      os.fspath(manual_dir))
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if builder.is_prepared() and manual is not None:
    built = builder.info.metadata.get("source") or {}
    if not os.path.isdir(manual):
      print(f"{manual}: no such folder; reusing the data set at "
            f"{builder.data_dir}, built from "
            f"{built.get('manual_dir', 'an unrecorded folder')}", flush=True)
    elif (reason := stale_reason(builder, manual)):
      _check_plans(manual, require_train_masks)  # The old build stays if bad.
      print(f"rebuilding {builder.data_dir}: {manual} differs from the files "
            f"it was built from ({reason})", flush=True)
      mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual, download_mode=mode,
      # No GCS lookup: it is a network call, and ISIC is not hosted there.
      try_download_gcs=False))
  if mode == tfds.download.GenerateMode.FORCE_REDOWNLOAD:
    builder = make_builder(data_dir, manual_dir, image_size,
                           image_format=image_format,
                           require_train_masks=require_train_masks)
  has_masks = dict(builder.info.metadata.get("has_masks", {}))
  if require_train_masks and not has_masks.get("train", False):
    raise MissingMasksError(_one_line(
        f"{builder.data_dir}: was built without training masks "
        f"(require_train_masks=False); add {masks_name('train')}.zip to "
        f"{manual_dir} and run again: the data set is then rebuilt"))
  return builder
