"""The arms by name, and the comparisons a config declares between them.

An arm is a reported stage (``"classification"``, ``"joint"``,
``"gap_control"``, ...) or a linear head (``"rankopt"``,
``"logistic_regression"``); its column in the reports' CSVs is the slug of
its ``report_as``. A config declares ``report.comparisons`` ((name, arm a,
arm b, question), the primary first) and ``report.sensitivity_comparisons``
((name, arm a, arm b)) by arm name, so renaming a label moves no row; a
report writes both to ``arms.csv`` and ``comparisons.csv`` beside its tables.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import pandas as pd

from rapool_jax import evaluate
from rapool_jax.analysis import frames

# Head arm -> the rankopt key holding its label.
HEADS = {"rankopt": "report_as",
         "logistic_regression": "logistic_regression_report_as"}
AUC, SENSITIVITY = "auc", "sensitivity"


@dataclasses.dataclass(frozen=True)
class Comparison:
  """``kind`` (``AUC`` or ``SENSITIVITY``) of arm ``a`` against ``b``."""

  kind: str
  name: str
  a: str
  b: str
  question: str = ""


def declared_arms(config: dict) -> dict[str, str]:
  """Arm -> CSV column of every arm a config (its JSON) can report."""
  arms = {n: evaluate.row_slug(s["report_as"])
          for n, s in config["stages"].items() if s.get("report_as")}
  rankopt = config.get("rankopt", {})
  arms.update({arm: evaluate.row_slug(rankopt[key])
               for arm, key in HEADS.items() if rankopt.get(key)})
  return arms


def trained_arms(config: dict) -> dict[str, str]:
  """The arms a run of ``config`` reports: its ``stage_order``'s reported
  stages, then its enabled heads."""
  declared = declared_arms(config)
  arms = {n: declared[n] for n in config["stage_order"] if n in declared}
  rankopt = config.get("rankopt", {})
  if rankopt.get("enabled"):
    arms["rankopt"] = declared["rankopt"]
    if rankopt.get("logistic_regression"):
      arms["logistic_regression"] = declared["logistic_regression"]
  return arms


def declared_comparisons(config: dict) -> list[Comparison]:
  """A config's ``report.comparisons`` and ``sensitivity_comparisons``;
  ValueError for a config (a run's config.json) made before they existed,
  which would otherwise report no comparison at all."""
  report = config.get("report", {})
  if "comparisons" not in report:
    raise ValueError(
        "config.json has no report.comparisons (the run predates comparisons "
        "declared by arm name): give the config that declares them, e.g. "
        "--comparisons configs/isic2017.py:crossval")
  return ([Comparison(AUC, *c) for c in report.get("comparisons", ())]
          + [Comparison(SENSITIVITY, *c)
             for c in report.get("sensitivity_comparisons", ())])


def applicable(config: dict, declaring: dict | None = None
               ) -> tuple[list[Comparison], list[str]]:
  """The comparisons ``declaring`` (default: ``config``) declares whose arms
  a run of ``config`` trains, and a line for each left out because its
  ``stage_order`` (or heads) leaves an arm untrained. ValueError naming an
  arm the config does not have."""
  declared, trained = declared_arms(config), trained_arms(config)
  kept, notes = [], []
  for c in declared_comparisons(config if declaring is None else declaring):
    for arm in (c.a, c.b):
      if arm not in declared:
        raise ValueError(f"comparison {c.name!r}: the config has no arm "
                         f"{arm!r} (its arms: {', '.join(declared)})")
    untrained = [arm for arm in (c.a, c.b) if arm not in trained]
    if untrained:
      notes.append(f"comparison {c.name!r} left out: arm {untrained[0]} is "
                   "not trained (stage_order / rankopt)")
    else:
      kept.append(c)
  return kept, notes


def write(out: str, arms: dict[str, str],
          comparisons: Sequence[Comparison]) -> None:
  """OUT/arms.csv (arm, column) and OUT/comparisons.csv."""
  frames.write_csv(os.path.join(out, "arms.csv"), pd.DataFrame(
      {"arm": list(arms), "column": list(arms.values())}))
  frames.write_csv(os.path.join(out, "comparisons.csv"), pd.DataFrame(
      [dataclasses.asdict(c) for c in comparisons],
      columns=[f.name for f in dataclasses.fields(Comparison)]))


def read(out: str) -> tuple[dict[str, str], list[Comparison]]:
  """OUT's arms (arm -> column) and comparisons, as ``write`` left them."""
  arms = frames.read_csv(os.path.join(out, "arms.csv"))
  comparisons = frames.read_csv(os.path.join(out, "comparisons.csv"))
  return (dict(zip(arms["arm"], arms["column"])),
          [Comparison(**r) for r in comparisons.to_dict("records")])


def resolve(comparisons: Sequence[Comparison], arms: dict[str, str],
            kind: str) -> list[Comparison]:
  """The comparisons of ``kind``, with ``a`` and ``b`` as CSV columns;
  ValueError naming an arm that ``arms`` lacks."""
  out = []
  for c in comparisons:
    if c.kind != kind:
      continue
    for arm in (c.a, c.b):
      if arm not in arms:
        raise ValueError(f"comparisons.csv: {c.name!r} compares arm {arm!r}, "
                         f"which arms.csv does not list")
    out.append(dataclasses.replace(c, a=arms[c.a], b=arms[c.b]))
  return out


def resolve_both(arms: dict[str, str], comparisons: Sequence[Comparison]
                 ) -> tuple[list[Comparison], list[Comparison]]:
  """``resolve``'s AUC and sensitivity comparisons."""
  return (resolve(comparisons, arms, AUC),
          resolve(comparisons, arms, SENSITIVITY))


def check_columns(arms: dict[str, str], columns: Sequence[str],
                  where: str) -> list[str]:
  """Lines naming each arm of arms.csv whose column ``where`` lacks, and
  each column of ``where`` that arms.csv does not name."""
  problems = [f"{where}: no column {col} (arm {arm})"
              for arm, col in arms.items() if col not in columns]
  return problems + [f"{where}: column {col} is no arm of arms.csv"
                     for col in columns if col not in arms.values()]
