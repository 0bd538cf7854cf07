"""Tidy frames of per-image scores.

A run writes ``predictions/<split>/<column>.csv`` (``image,label,score``
[,``jaccard``]) for every reported model. Here they become pandas frames:
*wide*, one score column per arm (the reports' CSVs), or *long* (tidy), one
row per image, run and arm: ``image, label[, fold, seed], arm, score``, plus
any stratum column joined by image id.
"""

from __future__ import annotations

import collections
import csv
import json
import math
import os
from typing import Sequence

import numpy as np
import pandas as pd


def read_csv(path: str) -> pd.DataFrame:
  """Every cell of a CSV as text (no NaN guessing); ValueError if absent."""
  if not os.path.exists(path):
    raise ValueError(f"{path}: missing")
  return pd.read_csv(path, dtype=str, keep_default_na=False)


def arm_columns(frame: pd.DataFrame, keys: Sequence[str]) -> list[str]:
  """The columns of a wide frame that are not ``keys``: its arms."""
  return [c for c in frame.columns if c not in keys]


def score_frame(text: pd.DataFrame, keys: Sequence[str],
                path: str) -> pd.DataFrame:
  """A wide CSV's text, typed: ints for the keys but ``image``, floats for
  the arms (NaN where empty), parsed by ``float`` so that scores round-trip
  to the bit."""
  if text.empty:
    raise ValueError(f"{path}: no rows")
  out = text.copy()
  for k in keys:
    if k not in out:
      raise ValueError(f"{path}: no column {k!r}")
    if k != "image":
      out[k] = out[k].astype(int)
  for a in arm_columns(out, keys):
    out[a] = np.array([float(v) if v != "" else math.nan for v in out[a]])
  return out


def write_csv(path: str, frame: pd.DataFrame) -> None:
  """As the ``csv`` module writes (CRLF), floats as ``repr``: exact."""
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(list(frame.columns))
    for row in zip(*(frame[c].tolist() for c in frame.columns)):
      w.writerow([repr(v) if isinstance(v, float) else v for v in row])


def tidy(wide: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
  """Wide [N, keys + arms] -> long [N * arms]: ``*keys, arm, score``, arm
  after arm, each in the wide frame's row order."""
  return wide.melt(id_vars=list(keys), var_name="arm", value_name="score")


def widen(long: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
  """Long -> wide: one score column per arm, arms in order of appearance;
  every arm must cover the same ``keys`` rows in the same order."""
  keys = list(keys)
  blocks = list(long.groupby("arm", sort=False))
  base = blocks[0][1][keys].reset_index(drop=True)
  for arm, block in blocks:
    if not block[keys].reset_index(drop=True).equals(base):
      raise ValueError(f"arm {arm!r} scores other rows than "
                       f"{blocks[0][0]!r}")
  return base.assign(**{arm: b["score"].to_numpy() for arm, b in blocks})


def average_scores(long: pd.DataFrame, by: str = "image",
                   keep: Sequence[str] = ("label",)) -> pd.DataFrame:
  """Each (``by``, arm)'s mean score over its rows [M * arms]: ``by`` (sorted),
  ``keep`` (first row's), ``arm``, ``score`` and ``n``, the rows averaged
  (seeds; for a test image, every fold model too). Summed in row order by
  ``np.bincount``, so that a report's figures never move in the last bit."""
  parts = []
  for arm, g in long.groupby("arm", sort=False):
    ids, first, inverse = np.unique(g[by].to_numpy(), return_index=True,
                                    return_inverse=True)
    count = np.bincount(inverse)
    parts.append(pd.DataFrame({
        by: ids, **{k: g[k].to_numpy()[first] for k in keep}, "arm": arm,
        "score": np.bincount(inverse, weights=g["score"].to_numpy()) / count,
        "n": count}))
  return pd.concat(parts, ignore_index=True)


def average_wide(wide: pd.DataFrame, keys: Sequence[str],
                 keep: Sequence[str] = ("label",)) -> pd.DataFrame:
  """``average_scores`` of a wide frame, wide again: ``image, *keep, n``,
  then each arm's mean score, one row per image."""
  long = average_scores(tidy(wide, keys), "image", keep)
  return widen(long, ["image", *keep, "n"])


def join_strata(frame: pd.DataFrame, strata: pd.DataFrame,
                on: str = "image") -> pd.DataFrame:
  """``frame`` [N] with the columns of ``strata`` (e.g. artefact flags) joined
  by ``on``; rows that ``strata`` lacks get NaN there (unannotated, not
  clean: the caller counts and drops them). ValueError if ``strata`` lists
  an image twice."""
  twice = strata[on][strata[on].duplicated()]
  if len(twice):
    raise ValueError(f"strata: {on} {twice.iloc[0]} appears more than once")
  return frame.merge(strata, on=on, how="left", validate="many_to_one")


def run_config(run_dir: str) -> dict:
  """A run's ``config.json``."""
  with open(os.path.join(run_dir, "config.json")) as f:
    return json.load(f)


def _predictions(path: str) -> pd.DataFrame:
  frame = read_csv(path)
  if frame["image"].duplicated().any():
    raise ValueError(f"{path}: an image appears more than once")
  return frame.set_index("image").sort_index()


def run_scores(run: str, split: str, columns: Sequence[str], key: dict,
               value: str = "score") -> pd.DataFrame:
  """Wide [images]: one row per image of ``run/predictions/<split>``, the
  ``key`` (fold, seed), and each column's ``value`` (float scores; the text
  of another value such as ``jaccard``, "" where a file has none)."""
  preds = {c: _predictions(os.path.join(run, "predictions", split, c + ".csv"))
           for c in columns}
  first = preds[columns[0]]
  for c, p in preds.items():
    if not p.index.equals(first.index):
      raise ValueError(f"{run}/predictions/{split}: {c}.csv scores other "
                       f"images than {columns[0]}.csv")
  out = {"image": first.index.to_numpy(),
         "label": first["label"].astype(int).to_numpy(), **key}
  for c, p in preds.items():
    out[c] = ([float(v) for v in p[value]] if value == "score" else
              (p[value].to_numpy() if value in p else [""] * len(p)))
  return pd.DataFrame(out)


def duplicates(frame: pd.DataFrame, keys: Sequence[str],
               name: str) -> list[str]:
  """A line per key tuple (e.g. image and seed) appearing more than once."""
  seen = collections.Counter(zip(*(frame[k].tolist() for k in keys)))
  return [f"{name}: {dict(zip(keys, k))} appears {n} times"
          for k, n in sorted(seen.items()) if n > 1]


def same_images_per_group(frame: pd.DataFrame, group_keys: Sequence[str],
                          name: str) -> list[str]:
  """Within ``group_keys[:-1]`` (e.g. fold), every value of the last key
  (seed) scores the same images with the same labels."""
  *outer, inner = group_keys
  sets = collections.defaultdict(dict)
  rows = zip(frame["image"], frame["label"].tolist(), frame[inner].tolist(),
             *(frame[k].tolist() for k in outer))
  for image, label, value, *g in rows:
    sets[tuple(g)].setdefault(value, {})[image] = label
  problems = []
  for g, by_inner in sorted(sets.items()):
    (first, ref), *rest = sorted(by_inner.items())
    for value, images in rest:
      for image in sorted(set(ref) ^ set(images)):
        where = first if image in ref else value
        problems.append(f"{name}: {image} ({dict(zip(outer, g))}) is scored "
                        f"in {inner} {where} but not in every {inner}")
      problems += [f"{name}: {image} has label {ref[image]} in {inner} "
                   f"{first} but {images[image]} in {inner} {value}"
                   for image in sorted(set(ref) & set(images))
                   if ref[image] != images[image]]
  return problems
