"""Runs on disk -> tidy frames with the arms by name.

A run's ``results.json`` rows give its reported models in order; its
``config.json`` says which arm (stage or head) each one is (``design``).
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import pandas as pd

from rapool_jax import evaluate
from rapool_jax.analysis import design
from rapool_jax.analysis import frames

KEYS = ("image", "label", "fold", "seed")


def run_columns(run_dir: str) -> list[str]:
  """CSV columns (file stems) in the order of the run's results rows."""
  with open(os.path.join(run_dir, "results.json")) as f:
    return [evaluate.row_slug(r["model"]) for r in json.load(f)["rows"]]


def run_arms(run_dir: str, config: dict) -> dict[str, str]:
  """Arm -> column of a run, in its results rows' order; ValueError for a
  row that is no arm its config trains."""
  by_column = {c: a for a, c in design.trained_arms(config).items()}
  columns = run_columns(run_dir)
  for c in columns:
    if c not in by_column:
      raise ValueError(f"{run_dir}: results row {c} is no arm its "
                       f"config.json trains ({', '.join(by_column)})")
  return {by_column[c]: c for c in columns}


def split_frame(run_dirs: Sequence[str], split: str,
                arms: Sequence[str] = ()) -> pd.DataFrame:
  """The tidy frame of ``split`` over ``run_dirs`` [rows * arms]: ``image,
  label, fold, seed, arm, score``, the arm by name (fold -1 for a run
  without folds). ``arms``: only these (default: every arm the runs
  report with predictions on ``split``)."""
  parts = []
  for run in run_dirs:
    config = frames.run_config(run)
    named = run_arms(run, config)
    where = os.path.join(run, "predictions", split)
    named = {a: c for a, c in named.items() if (a in arms if arms else
             os.path.exists(os.path.join(where, c + ".csv")))}
    key = {"fold": config["data"].get("crossval", {}).get("fold", -1),
           "seed": config["seed"]}
    wide = frames.run_scores(run, split, list(named.values()), key)
    parts.append(wide.rename(columns={c: a for a, c in named.items()}))
  return frames.tidy(pd.concat(parts, ignore_index=True), KEYS)
