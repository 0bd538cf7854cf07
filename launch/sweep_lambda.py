"""Table 1 of the paper: the segmentation weight lambda of Step 4 (validation).

    python -m launch.sweep_lambda --config configs/isic2017.py --workdir BASE \
        [--lambdas 0.01,0.1,1,5,7.5,10,12.5,15,20] [-- OVERRIDES]

Steps 2-3 once in ``BASE/shared``, Step 4 per lambda in ``BASE/lambda_<v>/``,
all on the validation split -> ``BASE/table1.md/.json/.png``.
"""

from __future__ import annotations

import os
import sys

from launch import common
from launch import fanout
from rapool_jax.analysis import sweeps
from rapool_jax import errors

STAGE = "joint"  # the stage whose lambda_seg is swept; those before are shared
PAPER_GRID = (0.01, 0.1, 1, 5, 7.5, 10, 12.5, 15, 20)
SMOKE_GRID = (0.1, 7.5)


def make_jobs(config: str, root: str, lambdas, overrides) -> list[fanout.Job]:
  """Prepare, the shared base and one Step-4 job per lambda."""
  cfg = common.load_config(config)
  shared = common.shared_stages(cfg, STAGE, overrides)
  run_overrides = list(overrides) + common.report_split_overrides(
      cfg, "validation")
  jobs = [fanout.prepare_job(root, config, overrides)]
  base = os.path.join(root, "shared")
  if shared:
    jobs.append(common.base_job("shared", base, config, run_overrides, shared,
                                {"role": "base", "stages": shared}))
  for v in lambdas:
    tag = common.value_tag(v)
    jobs.append(common.stage_job(
        f"lambda_{tag}", os.path.join(root, f"lambda_{tag}"), config,
        run_overrides + [f"--config.stages.{STAGE}.lambda_seg={tag}"], base,
        shared, {"lambda": float(v)}))
  return jobs


def main(argv=None) -> int:
  parser = common.parser(__doc__, f"{common.TINY_CONFIG}, lambdas {SMOKE_GRID}",
                         "BASE folder of the sweep")
  parser.add_argument("--lambdas", default="",
                      help="comma-separated (default: the paper's 9 values)")
  args, overrides = common.parse_args(parser, argv)
  config = common.resolve_config(args.config, args.smoke)
  lambdas = ([float(v) for v in args.lambdas.split(",")] if args.lambdas
             else SMOKE_GRID if args.smoke else PAPER_GRID)
  root = os.path.abspath(args.workdir)
  jobs = make_jobs(config, root, lambdas, overrides)
  if not fanout.execute(args, jobs, root):
    return 0
  table = sweeps.table1(root, common.load_runs(jobs), STAGE,
                        common.load_config(config).rankopt.report_as)
  return int(any(e["state"] != "ok" for e in table["rows"]))


if __name__ == "__main__":
  with errors.one_line_errors():
    sys.exit(main())
