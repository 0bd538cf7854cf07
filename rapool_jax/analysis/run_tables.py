"""Tables of many runs' ``results.json`` rows (``launch/aggregate.py`` and the
sweeps): one line per run and row, mean ± SD over seeds, runs without results."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import numpy as np
import pandas as pd

from rapool_jax.analysis import tables

METRICS = ("sensitivity", "specificity", "accuracy", "auc", "jaccard")
SHORT = {"sensitivity": "Sen", "specificity": "Spe", "accuracy": "Acc",
         "auc": "AUC", "jaccard": "JA"}
fmt = tables.num


@dataclasses.dataclass
class Run:
  """A workdir and what it holds. ``state``: ok, failed, incomplete, missing."""

  workdir: str
  name: str
  state: str
  reason: str = ""
  results: dict | None = None
  meta: dict = dataclasses.field(default_factory=dict)

  def row(self, model: str) -> dict | None:
    """The results row named ``model`` (or of stage ``model``), if any."""
    for r in (self.results or {}).get("rows", []):
      if model in (r.get("model"), r.get("stage")):
        return r
    return None


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
  """Mean, sample std (0 for one value) and count of the finite values."""
  v = [x for x in values if x is not None and math.isfinite(x)]
  if not v:
    return float("nan"), float("nan"), 0
  m = sum(v) / len(v)
  s = (math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
       if len(v) > 1 else 0.0)
  return m, s, len(v)


def fmt_mean_std(values: Sequence[float], digits: int = 3) -> str:
  m, s, n = mean_std(values)
  if n == 0:
    return "-"
  return f"{m:.{digits}f} ± {s:.{digits}f}" if n > 1 else f"{m:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  """A pipe table of ``rows`` under ``header``, ending in a newline."""
  return "\n".join(tables.markdown_table(
      pd.DataFrame(list(rows), columns=list(header), dtype=object))) + "\n"


def status_section(runs: Sequence[Run]) -> str:
  """Markdown list of the runs that did not finish, with why; "" if none."""
  bad = [r for r in runs if r.state != "ok"]
  if not bad:
    return ""
  lines = [f"**{len(bad)} of {len(runs)} runs have no results:**", ""]
  lines += [f"- `{r.workdir}` ({r.name}): **{r.state}**, {r.reason}"
            for r in bad]
  return "\n".join(lines) + "\n"


def _wanted(row: dict, models: Sequence[str]) -> bool:
  return not models or bool({row.get("model"), row.get("stage")} & set(models))


def results_table(runs: Sequence[Run], models: Sequence[str] = (),
                  root: str = "") -> str:
  """One line per (run, results row); ``models`` filters rows by name/stage."""
  rows = [[f"`{os.path.relpath(run.workdir, root) if root else run.workdir}`",
           r["model"]] + [fmt(r.get(m)) for m in METRICS]
          + [fmt(r.get("threshold"))]
          for run in runs if run.state == "ok"
          for r in run.results.get("rows", []) if _wanted(r, models)]
  return markdown_table(
      ["run", "model"] + [SHORT[m] for m in METRICS] + ["threshold"], rows)


def plot_runs(path: str, runs: Sequence[Run], models: Sequence[str] = (),
              metric: str = "auc") -> None:
  """Grouped bars: ``metric`` per run (x) and results row (colour)."""
  ok = [r for r in runs if r.state == "ok"]
  names = list(dict.fromkeys(r["model"] for run in ok
                             for r in run.results.get("rows", [])
                             if _wanted(r, models)))
  value = lambda run, model: (run.row(model) or {}).get(metric)  # noqa: E731
  values = pd.DataFrame(
      [[np.nan if value(run, m) is None else value(run, m) for m in names]
       for run in ok], columns=names, index=[r.name for r in ok], dtype=float)
  tables.plot_bars(path, values, SHORT.get(metric, metric))
