"""Gathers ``results.json`` of many workdirs into one markdown table and a plot.

    python launch/aggregate.py DIR... [--out table.md] [--plot auc.png]
        [--model "Step 4 + RankOpt"]

Each DIR is a run's workdir or a folder above many (searched recursively); a
folder holding a fan-out ``jobs.json`` also says which runs were expected, so
runs that never started show up as missing. Runs without results, and runs
whose recorded exit status (``fanout_status.json``) is not 0, are listed with
the reason and the last line of their log.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

if __package__ in (None, ""):  # run as `python launch/aggregate.py`
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch import fanout  # noqa: E402

METRICS = ("sensitivity", "specificity", "accuracy", "auc", "jaccard")
SHORT = {"sensitivity": "Sen", "specificity": "Spe", "accuracy": "Acc",
         "auc": "AUC", "jaccard": "JA"}
_SKIP_DIRS = {"checkpoints", "tensorboard", "figures", "slurm"}


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


def load_run(workdir: str, name: str = "", meta: dict | None = None,
             done_file: str = "results.json") -> Run:
  """Reads one workdir: results, recorded exit status, reason of a failure."""
  name = name or os.path.basename(os.path.normpath(workdir))
  status = fanout.read_status(workdir)
  results = None
  path = os.path.join(workdir, done_file)
  if os.path.exists(path):
    try:
      with open(path) as f:
        results = json.load(f)
    except ValueError as e:
      return Run(workdir, name, "failed", f"unreadable {done_file}: {e}",
                 meta=meta or {})
  tail = fanout.log_tail(workdir, 1)
  if status is not None and status.get("returncode") not in (None, 0):
    reason = status.get("error") or f"exit status {status['returncode']}"
    return Run(workdir, name, "failed", f"{reason}: {tail}" if tail else reason,
               results, meta or {})
  if results is not None:
    return Run(workdir, name, "ok", "", results, meta or {})
  if status is not None and status.get("state") == "running":
    return Run(workdir, name, "incomplete",
               f"started {status.get('started')} on {status.get('host')}, no "
               f"{done_file} yet (still running, or killed): {tail}",
               meta=meta or {})
  if os.path.isdir(workdir):
    return Run(workdir, name, "missing", f"no {done_file}, no recorded exit "
               f"status{': ' + tail if tail else ''}", meta=meta or {})
  return Run(workdir, name, "missing", "never started", meta=meta or {})


def _is_run_dir(path: str) -> bool:
  return any(os.path.exists(os.path.join(path, f)) for f in
             ("results.json", fanout.STATUS_FILE, "config.json"))


def find_runs(dirs: Iterable[str], include_prepare: bool = False) -> list[Run]:
  """Runs named by fan-out job lists under ``dirs``, and other run folders."""
  runs: dict[str, Run] = {}
  hidden = set()  # prepare jobs: not runs, and not to be found by the walk
  for top in dirs:
    if not os.path.isdir(top):
      runs[os.path.abspath(top)] = Run(top, top, "missing", "no such folder")
      continue
    for root, subdirs, _ in os.walk(top):
      jobs_path = os.path.join(root, fanout.JOBS_FILE)
      if os.path.exists(jobs_path):
        for job in fanout.read_jobs(jobs_path):
          path = os.path.abspath(job.workdir)
          if job.phase == fanout.PREPARE_PHASE and not include_prepare:
            hidden.add(path)
            continue
          runs.setdefault(path, load_run(job.workdir, job.name, job.meta,
                                         job.done_file))
      subdirs[:] = sorted(
          d for d in subdirs if d not in _SKIP_DIRS
          and os.path.abspath(os.path.join(root, d)) not in hidden)
      if _is_run_dir(root):
        runs.setdefault(os.path.abspath(root), load_run(root))
        subdirs[:] = []
  return sorted(runs.values(), key=lambda r: r.workdir)


# ----------------------------------------------------------------------------
# Formatting.


def fmt(value, digits: int = 3) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  return f"{value:.{digits}f}"


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


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return "\n".join(lines) + "\n"


def status_section(runs: Sequence[Run]) -> str:
  """Markdown list of the runs that did not finish, with why; "" if none."""
  bad = [r for r in runs if r.state != "ok"]
  if not bad:
    return ""
  lines = [f"**{len(bad)} of {len(runs)} runs have no results:**", ""]
  lines += [f"- `{r.workdir}` ({r.name}): **{r.state}**, {r.reason}"
            for r in bad]
  return "\n".join(lines) + "\n"


def results_table(runs: Sequence[Run], models: Sequence[str] = (),
                  root: str = "") -> str:
  """One line per (run, results row); ``models`` filters rows by name/stage."""
  rows = []
  for run in runs:
    if run.state != "ok":
      continue
    for r in run.results.get("rows", []):
      if models and not {r.get("model"), r.get("stage")} & set(models):
        continue
      where = os.path.relpath(run.workdir, root) if root else run.workdir
      rows.append([f"`{where}`", r["model"]] +
                  [fmt(r.get(m)) for m in METRICS] + [fmt(r.get("threshold"))])
  header = ["run", "model"] + [SHORT[m] for m in METRICS] + ["threshold"]
  return markdown_table(header, rows)


def plot_runs(path: str, runs: Sequence[Run], models: Sequence[str] = (),
              metric: str = "auc") -> None:
  """Grouped bars: ``metric`` per run (x) and results row (colour)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  ok = [r for r in runs if r.state == "ok"]
  names = []
  for run in ok:
    for r in run.results.get("rows", []):
      if (not models or {r.get("model"), r.get("stage")} & set(models)) and \
          r["model"] not in names:
        names.append(r["model"])
  width_in = max(5, 0.6 * len(ok) * max(1, len(names)))
  fig, ax = plt.subplots(figsize=(width_in, 4))
  width = 0.8 / max(1, len(names))
  for k, model in enumerate(names):
    xs, ys = [], []
    for i, run in enumerate(ok):
      row = run.row(model)
      if row is not None and row.get(metric) is not None:
        xs.append(i + (k - (len(names) - 1) / 2) * width)
        ys.append(row[metric])
    ax.bar(xs, ys, width, label=model)
  ax.set_xticks(range(len(ok)))
  ax.set_xticklabels([r.name for r in ok], rotation=45, ha="right", fontsize=8)
  ax.set_ylabel(SHORT.get(metric, metric))
  ax.set_ylim(0, 1)
  if names:
    ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("dirs", nargs="+",
                      help="run workdirs or folders above them")
  parser.add_argument("--out", default="", help="write the markdown here too")
  parser.add_argument("--plot", default="",
                      help="bar chart of --metric per run")
  parser.add_argument("--metric", default="auc", choices=METRICS)
  parser.add_argument("--model", action="append", default=[],
                      help="only these results rows (model name or stage); "
                           "repeatable")
  args = parser.parse_args(argv)
  runs = find_runs(args.dirs)
  root = os.path.commonpath([os.path.abspath(d) for d in args.dirs])
  ok = sum(r.state == "ok" for r in runs)
  text = (f"{ok} of {len(runs)} runs finished.\n\n" +
          results_table(runs, args.model, root) + "\n" + status_section(runs))
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  if args.plot:
    plot_runs(args.plot, runs, args.model, args.metric)
  return 0


if __name__ == "__main__":
  sys.exit(main())
