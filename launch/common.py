"""What the launch scripts share: the command line, config files, shared-stage
bases and the table files they write."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Sequence

from launch import fanout
from rapool_jax import config_files
from rapool_jax import errors

TINY_CONFIG = "configs/tiny.py"


def parse_args(parser: argparse.ArgumentParser, argv=None):
  """``(args, overrides)``: the script's flags and the runner's before
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
  """Phase 0: trains only the ``shared`` stages (no RankOpt, which reads the
  last stage)."""
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
  """Overrides that report on ``eval_split`` (e.g. validation, to choose a
  setting as the paper's Table 1 does) without choosing anything on it:
  RankOpt's threshold then comes from the training split."""
  out = [f"--config.data.eval_split={eval_split}"]
  if config.rankopt.threshold_split == eval_split:
    out.append("--config.rankopt.threshold_split=")
  return out


def value_tag(v: float) -> str:
  """0.01 -> "0.01", 7.5 -> "7.5", 20.0 -> "20": folder names and labels."""
  return format(float(v), "g")


def eval_split_of(runs, default: str) -> tuple[str, int | None]:
  """The evaluation split and its size, from the first finished run."""
  for run in runs:
    if run.state == "ok":
      return run.results["eval_split"], run.results["num_eval_examples"]
  return default, None


def write_table(folder: str, stem: str, text: str, payload: dict) -> None:
  """``STEM.md`` (printed too) and ``STEM.json`` in ``folder``."""
  with open(os.path.join(folder, f"{stem}.md"), "w") as f:
    f.write(text)
  with open(os.path.join(folder, f"{stem}.json"), "w") as f:
    json.dump(payload, f, indent=1)
  print(text, flush=True)


@contextlib.contextmanager
def figure(path: str, *args, **kwargs):
  """``(fig, axes)`` of ``plt.subplots(*args, **kwargs)``, saved to
  ``path`` on leaving."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # files only: no display on the machines that run this
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(*args, **kwargs)
  yield fig, axes
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
