"""Gathers ``results.json`` of many workdirs into one markdown table and a plot.

    python -m launch.aggregate DIR... [--out table.md] [--plot auc.png]
        [--model "Step 4 + RankOpt"]

Each DIR is a run's workdir or a folder above many (searched recursively); a
folder holding a fan-out ``jobs.json`` also says which runs were expected, so
runs that never started show up as missing. Runs without results, and runs
whose recorded exit status (``fanout_status.json``) is not 0, are listed with
the reason and the last line of their log. The tables and the plot: ``rapool_jax/analysis/run_tables.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterable

from launch import fanout
from rapool_jax.analysis import run_tables
from rapool_jax.analysis.run_tables import Run

# The names the sweeps' scripts use.
METRICS, SHORT = run_tables.METRICS, run_tables.SHORT
fmt, mean_std = run_tables.fmt, run_tables.mean_std
fmt_mean_std, markdown_table = run_tables.fmt_mean_std, run_tables.markdown_table
status_section = run_tables.status_section
_SKIP_DIRS = {"checkpoints", "tensorboard", "figures", "slurm"}


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
          run_tables.results_table(runs, args.model, root) + "\n" + status_section(runs))
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  if args.plot:
    run_tables.plot_runs(args.plot, runs, args.model, args.metric)
  return 0


if __name__ == "__main__":
  sys.exit(main())
