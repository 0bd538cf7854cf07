"""What produced a result: code commit, package versions, command line."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import subprocess
import sys

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
            "tensorflow-datasets", "numpy", "ml-collections", "grain",
            "rapool-jax")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit() -> str | None:
  """``HEAD``'s hash, ``+dirty`` when tracked files changed; None outside a
  git checkout (an installed wheel) or without git."""
  def git(*args):
    return subprocess.run(["git", "-C", _REPO, *args], capture_output=True,
                          text=True, timeout=10, check=True).stdout.strip()
  try:
    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
  except (OSError, subprocess.SubprocessError):
    return None
  return commit + ("+dirty" if dirty else "")


def package_version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def config_source(argv=None) -> tuple[str, list[str]]:
  """``(config file[:variant], overrides)`` from a ``rapool_jax.main``
  command line; ``("", [])`` when the config was made in Python."""
  argv = sys.argv if argv is None else argv
  source, overrides = "", []
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      source = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      source = argv[i + 1]
    elif arg.startswith("--config."):
      overrides.append(arg)
  return source, overrides


def run_record() -> dict:
  """One invocation's provenance, for ``run_info.json``."""
  return {"command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
          "commit": git_commit(),
          "packages": {name: package_version(name) for name in PACKAGES},
          "python": sys.version.split()[0]}


def results_header(config) -> str:
  """Markdown lines naming the config, its overrides, the seed and commit."""
  source, overrides = config_source()
  commit = git_commit()
  return "\n".join([
      f"Config: `{source}`" if source else "Config: built in Python "
      "(see config.json)",
      "Overrides: " + (" ".join(f"`{o}`" for o in overrides) if overrides
                       else "none"),
      f"Seed: {config.seed}",
      f"Commit: `{commit}`" if commit else "Commit: unknown (no git checkout)",
  ]) + "\n"


def append_run_info(workdir: str, wall_time_s: float, devices) -> None:
  """Adds this invocation (a resumed run has several) to
  ``WORKDIR/run_info.json``: its wall time and ``run_record()``; the
  top-level command, commit and packages are the latest invocation's."""
  path = os.path.join(workdir, "run_info.json")
  invocations, runs = [], []
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    invocations, runs = saved.get("invocations", []), saved.get("runs", [])
  invocations.append(wall_time_s)
  runs.append({**run_record(), "wall_time_s": wall_time_s})
  with open(path, "w") as f:
    json.dump({"wall_time_s": sum(invocations), "invocations": invocations,
               "devices": [str(d) for d in devices],
               **{k: runs[-1][k] for k in ("command", "commit", "packages")},
               "runs": runs}, f, indent=2)
