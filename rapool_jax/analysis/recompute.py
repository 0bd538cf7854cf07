"""A report's ``results.json`` and ``results.md``, written from its CSVs or
checked against a recomputation from them (``--check``)."""

from __future__ import annotations

import json
import math
import os
from typing import Callable

Compute = Callable[[str], dict]
Markdown = Callable[[dict], str]


def valid_tables(out: str, read: Callable[[str], dict],
                 validate: Callable[[dict], list]) -> dict:
  """``read(out)``; ValueError listing every problem ``validate`` finds."""
  t = read(out)
  problems = validate(t)
  if problems:
    raise ValueError("; ".join(problems))
  return t


def write_tables(out: str, compute: Compute, markdown: Markdown) -> dict:
  """results.json and results.md of OUT, from its CSVs."""
  results = compute(out)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=1, sort_keys=True)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(markdown(results))
  print(f"wrote {out}/results.md", flush=True)
  return results


def _same(fresh, saved) -> bool:
  if (isinstance(fresh, float) and isinstance(saved, (int, float))
      and not isinstance(saved, bool)):
    return math.isclose(fresh, saved, rel_tol=1e-9, abs_tol=1e-12)
  return fresh == saved and type(fresh) is type(saved)


def json_differences(fresh, saved, where: str = "results.json") -> list[str]:
  """Every key, entry or number of ``saved`` that is not ``fresh``'s."""
  if isinstance(fresh, dict) and isinstance(saved, dict):
    out = [f"{where}.{k}: missing (recomputed {fresh[k]!r:.60})"
           for k in fresh if k not in saved]
    out += [f"{where}.{k}: extra, not recomputed from the CSVs"
            for k in saved if k not in fresh]
    for k in fresh:
      if k in saved:
        out += json_differences(fresh[k], saved[k], f"{where}.{k}")
    return out
  if isinstance(fresh, list) and isinstance(saved, list):
    out = ([] if len(fresh) == len(saved) else
           [f"{where}: {len(saved)} entries saved, {len(fresh)} recomputed"])
    for i, (x, y) in enumerate(zip(fresh, saved)):
      label = x.get("name", x.get("arm", x.get("seed", i))) if isinstance(
          x, dict) else i
      out += json_differences(x, y, f"{where}[{label}]")
    return out
  return ([] if _same(fresh, saved)
          else [f"{where}: saved {saved!r}, recomputed {fresh!r}"])


def markdown_differences(fresh: str, path: str) -> list[str]:
  """The lines of the saved markdown that are not the recomputed ones."""
  if not os.path.exists(path):
    return [f"{path}: missing"]
  with open(path) as f:
    saved = f.read().split("\n")
  fresh_lines = fresh.split("\n")
  name = os.path.basename(path)
  out = [f"{name} line {i + 1}: saved {s!r}, recomputed {r!r}"
         for i, (s, r) in enumerate(zip(saved, fresh_lines)) if s != r]
  out += [f"{name} line {i + 1}: extra line {s!r}, not recomputed"
          for i, s in enumerate(saved[len(fresh_lines):], len(fresh_lines))]
  out += [f"{name} line {i + 1}: missing line {r!r}"
          for i, r in enumerate(fresh_lines[len(saved):], len(saved))]
  return out


def check(out: str, compute: Compute, markdown: Markdown) -> list[str]:
  """Differences between OUT's results.json/results.md and a recomputation
  from OUT's CSVs; [] when every figure recomputes."""
  try:
    fresh = compute(out)
  except (ValueError, KeyError) as e:
    return [f"{out}: the CSVs do not recompute: {e}"]
  path = os.path.join(out, "results.json")
  if not os.path.exists(path):
    return [f"{path}: missing"]
  try:
    with open(path) as f:
      saved = json.load(f)
  except ValueError as e:
    return [f"{path}: not JSON: {e}"]
  return (json_differences(fresh, saved) + markdown_differences(
      markdown(fresh), os.path.join(out, "results.md")))
