"""What the report commands share: their flags, the near-copy choice, and
``--check`` / ``--rebuild`` (``launch/crossval_report.py``,
``launch/testsplit_report.py``)."""

from __future__ import annotations

import argparse

from rapool_jax.analysis import near_copies
from rapool_jax.analysis import recompute


def add_near_copy_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--exclude-images", default="",
                      help="test images with a near-copy in train + "
                      "validation (CSV with an image column, or one a line)")
  parser.add_argument("--near-copies-from", default="",
                      help="find them instead with folds.near_copies on the "
                      "data of this run dir (loads the images)")
  parser.add_argument("--data-root", default="",
                      help="where that run's relative data paths start")


def near_copy_choice(args):
  """The ``exclude_images`` of a report that the flags ask for: a path, or
  the rows ``near_copies.near_copies_of_run`` finds."""
  if args.exclude_images and args.near_copies_from:
    raise SystemExit("give --exclude-images or --near-copies-from, not both")
  if args.near_copies_from:
    rows = near_copies.near_copies_of_run(args.near_copies_from,
                                          args.data_root)
    print(f"{len(rows)} test images have a near-copy in train + validation",
          flush=True)
    return rows
  return args.exclude_images


def report_parser(doc: str, runs_help: str, expected_flag: str,
                  expected_help: str) -> argparse.ArgumentParser:
  """The flags both reports take: run dirs, --out, what was meant to run,
  the near-copy list, --check OUT and --rebuild OUT."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument("runs", nargs="*", help=runs_help)
  parser.add_argument("--out", default="")
  parser.add_argument(expected_flag, default="", help=expected_help)
  add_near_copy_args(parser)
  parser.add_argument("--comparisons", default="",
                      help="config FILE[:ARG] whose report.comparisons to "
                      "use (runs whose config.json predates them)")
  parser.add_argument("--check", default="",
                      help="recompute OUT/results.json and results.md")
  parser.add_argument("--rebuild", default="",
                      help="rewrite OUT/results.json and results.md")
  return parser


def check_or_rebuild(args, compute: recompute.Compute,
                     markdown_of) -> int | None:
  """Runs --check or --rebuild when given (``markdown_of(OUT)`` is the
  report's markdown function): the exit status, else None."""
  if args.check:
    diffs = recompute.check(args.check, compute, markdown_of(args.check))
    print("\n".join(diffs) or f"{args.check}: results.json and results.md "
          "recompute from its CSVs", flush=True)
    return 1 if diffs else 0
  if args.rebuild:
    recompute.write_tables(args.rebuild, compute, markdown_of(args.rebuild))
    return 0
  return None


def main(parser: argparse.ArgumentParser, argv, compute: recompute.Compute,
         markdown_of, write, runs_are: str) -> int:
  """A report command: --check or --rebuild OUT, else ``write(args)`` from
  the run dirs (``runs_are`` names them in the usage error) to --out."""
  args = parser.parse_args(argv)
  status = check_or_rebuild(args, compute, markdown_of)
  if status is not None:
    return status
  if not args.runs or not args.out:
    parser.error(f"give {runs_are} and --out (or --check/--rebuild OUT)")
  write(args)
  return 0
