"""What the launch scripts share: config files, shared-stage bases, names."""

from __future__ import annotations

from typing import Sequence

from rapool_jax import config_files
from rapool_jax import errors

TINY_CONFIG = "configs/tiny.py"


def load_config(spec: str):
  """``configs/X.py[:arg]`` -> its ConfigDict (relative: cwd, then repo)."""
  try:
    return config_files.load(config_files.resolve(spec))
  except errors.UserError as e:
    raise SystemExit(str(e)) from None


def has_key(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def override_keys(overrides: Sequence[str]) -> list[str]:
  return [o.split("=", 1)[0].removeprefix("--config.") for o in overrides
          if o.startswith("--config.")]


def shared_stages(config, stage: str, overrides: Sequence[str]) -> list[str]:
  """The stages before ``stage`` in ``config.stage_order``: trained once."""
  if "stage_order" in override_keys(overrides):
    raise SystemExit("launch scripts set --config.stage_order themselves; "
                     "edit stage_order in the config file instead")
  order = list(config.stage_order)
  if stage not in order:
    raise SystemExit(f"stage {stage!r} is not in the config's stage_order "
                     f"{tuple(order)}")
  return order[:order.index(stage)]


def base_overrides(stages: Sequence[str]) -> list[str]:
  """Runs only ``stages`` (and no RankOpt, which reads the last stage)."""
  return [f"--config.stage_order={tuple(stages)!r}",
          "--config.rankopt.enabled=False"]


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
