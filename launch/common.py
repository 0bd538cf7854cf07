"""What the launch scripts share: the command line, config files, shared-stage
bases and reading their runs back."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from launch import fanout
from rapool_jax import config_files
from rapool_jax import errors
from rapool_jax.analysis import run_dirs
from rapool_jax.analysis import sweeps

TINY_CONFIG = "configs/tiny.py"


def parser(doc: str, smoke: str, workdir: str = "") -> argparse.ArgumentParser:
  """A sweep's parser: ``--config``, ``--workdir`` and ``--smoke``."""
  p = argparse.ArgumentParser(
      description=doc.splitlines()[0],
      usage="%(prog)s --workdir DIR [options] [-- --config.a=b ...]")
  p.add_argument("--config", default=None, help="configs/NAME.py[:arg]")
  p.add_argument("--workdir", required=True, help=workdir or None)
  p.add_argument("--smoke", action="store_true", help=smoke)
  return p


def parse_args(parser: argparse.ArgumentParser, argv=None):
  """``(args, overrides)``: the script's and the runner's flags before
  ``--``, the config overrides every run gets after it."""
  argv, overrides = fanout.split_overrides(
      sys.argv[1:] if argv is None else argv)
  fanout.add_runner_args(parser)
  return parser.parse_args(argv), overrides


def load_config(spec: str):
  """``configs/X.py[:arg]`` -> its ConfigDict (relative: cwd, then repo)."""
  try:
    return config_files.load(config_files.resolve(spec))
  except errors.UserError as e:
    raise SystemExit(str(e)) from None


def resolve_config(config: str | None, smoke: bool) -> str:
  """The config spec the jobs get: absolute (jobs run in the repo root)."""
  if smoke:
    if config and config != TINY_CONFIG:
      print(f"--smoke: using {TINY_CONFIG} instead of {config}", flush=True)
    config = TINY_CONFIG
  if not config:
    raise SystemExit("--config configs/NAME.py is required (or --smoke)")
  try:
    return config_files.resolve(config)
  except errors.UserError as e:
    raise SystemExit(str(e)) from None


def shared_stages(config, stage: str, overrides: Sequence[str]) -> list[str]:
  """The stages before ``stage`` in ``config.stage_order``: trained once."""
  if any(o.split("=", 1)[0] == "--config.stage_order" for o in overrides):
    raise SystemExit("launch scripts set --config.stage_order themselves; "
                     "edit stage_order in the config file instead")
  order = list(config.stage_order)
  if stage not in order:
    raise SystemExit(f"stage {stage!r} is not in the config's stage_order "
                     f"{tuple(order)}")
  return order[:order.index(stage)]


def base_job(name: str, workdir: str, config: str, overrides, shared,
             meta: dict) -> fanout.Job:
  """Phase 0: only the ``shared`` stages (no RankOpt: it reads the last)."""
  return fanout.Job(
      name=name, workdir=workdir, config=config, phase=0,
      overrides=list(overrides) + [
          f"--config.stage_order={tuple(shared)!r}",
          "--config.rankopt.enabled=False"], meta=meta)


def stage_job(name: str, workdir: str, config: str, overrides, base: str,
              shared, meta: dict) -> fanout.Job:
  """The full config, its ``shared`` stages linked from ``base`` (phase 1),
  or trained here where nothing is shared."""
  return fanout.Job(
      name=name, workdir=workdir, config=config, phase=1 if shared else 0,
      overrides=list(overrides), stages_from=base if shared else "",
      stages=list(shared), meta=meta)


def report_split_overrides(config, eval_split: str) -> list[str]:
  """Report on ``eval_split`` without choosing anything on it: RankOpt's
  threshold then comes from the training split."""
  out = [f"--config.data.eval_split={eval_split}"]
  if config.rankopt.threshold_split == eval_split:
    out.append("--config.rankopt.threshold_split=")
  return out


value_tag = sweeps.value_tag  # folder names and labels


def load_runs(jobs) -> list:
  """``run_tables.Run`` of every job but the data-preparing one."""
  return [run_dirs.load_run(j.workdir, j.name, j.meta, j.done_file)
          for j in jobs if j.phase != fanout.PREPARE_PHASE]
