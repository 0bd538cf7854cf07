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
import os
import sys

from rapool_jax import errors
from rapool_jax.analysis import run_dirs
from rapool_jax.analysis import run_tables

METRICS, status_section = run_tables.METRICS, run_tables.status_section
load_run, find_runs = run_dirs.load_run, run_dirs.find_runs


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
  with errors.one_line_errors():
    sys.exit(main())
