"""What a fan-out (``launch/fanout.py``) writes beside its runs, read back:
the job list ``ROOT/jobs.json``, each job's ``fanout_status.json`` and
``fanout.log``, and the runs found under folders, as ``run_tables.Run``."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Iterable, Sequence

from rapool_jax.analysis.run_tables import Run

JOBS_FILE = "jobs.json"
STATUS_FILE = "fanout_status.json"
LOG_FILE = "fanout.log"
PREPARE_PHASE = -1
_SKIP_DIRS = {"checkpoints", "tensorboard", "figures", "slurm"}


@dataclasses.dataclass
class Job:
  """One main-job run; ``meta``: labels for tables (lambda, variant, seed)."""

  name: str
  workdir: str
  config: str
  overrides: list[str] = dataclasses.field(default_factory=list)
  phase: int = 0
  stages_from: str = ""   # workdir of a finished run whose stages are reused
  stages: list[str] = dataclasses.field(default_factory=list)
  module: str = "rapool_jax.main"
  done_file: str = "results.json"
  meta: dict = dataclasses.field(default_factory=dict)

  def command(self, python: str = sys.executable) -> list[str]:
    return [python, "-m", self.module, "--config", self.config,
            "--workdir", self.workdir, *self.overrides]


def write_jobs(path: str, jobs: Sequence[Job]) -> None:
  names = [j.name for j in jobs]
  if len(set(names)) != len(names):
    raise ValueError(f"job names must be unique: {names}")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump({"jobs": [dataclasses.asdict(j) for j in jobs]}, f, indent=1)


def read_jobs(path: str) -> list[Job]:
  with open(path) as f:
    return [Job(**j) for j in json.load(f)["jobs"]]


def read_status(workdir: str) -> dict | None:
  try:
    with open(os.path.join(workdir, STATUS_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def is_finished(job: Job) -> bool:
  """Results written and no failure recorded after them."""
  if not os.path.exists(os.path.join(job.workdir, job.done_file)):
    return False
  status = read_status(job.workdir)
  return status is None or status.get("returncode") == 0


def log_tail(workdir: str, lines: int = 5) -> str:
  try:
    with open(os.path.join(workdir, LOG_FILE), errors="replace") as f:
      return "".join(f.readlines()[-lines:]).rstrip()
  except OSError:
    return ""


def load_run(workdir: str, name: str = "", meta: dict | None = None,
             done_file: str = "results.json") -> Run:
  """Reads one workdir: results, recorded exit status, reason of a failure."""
  name, meta = name or os.path.basename(os.path.normpath(workdir)), meta or {}
  status = read_status(workdir)
  results = None
  path = os.path.join(workdir, done_file)
  if os.path.exists(path):
    try:
      with open(path) as f:
        results = json.load(f)
    except ValueError as e:
      return Run(workdir, name, "failed", f"unreadable {done_file}: {e}",
                 meta=meta)
  tail = log_tail(workdir, 1)
  if status is not None and status.get("returncode") not in (None, 0):
    reason = status.get("error") or f"exit status {status['returncode']}"
    return Run(workdir, name, "failed", f"{reason}: {tail}" if tail else reason,
               results, meta)
  if results is not None:
    return Run(workdir, name, "ok", "", results, meta)
  if status is not None and status.get("state") == "running":
    return Run(workdir, name, "incomplete",
               f"started {status.get('started')} on {status.get('host')}, no "
               f"{done_file} yet (still running, or killed): {tail}", meta=meta)
  if os.path.isdir(workdir):
    return Run(workdir, name, "missing", f"no {done_file}, no recorded exit "
               f"status{': ' + tail if tail else ''}", meta=meta)
  return Run(workdir, name, "missing", "never started", meta=meta)


def _is_run_dir(path: str) -> bool:
  return any(os.path.exists(os.path.join(path, f)) for f in
             ("results.json", STATUS_FILE, "config.json"))


def find_runs(dirs: Iterable[str], include_prepare: bool = False) -> list[Run]:
  """Runs named by fan-out job lists under ``dirs``, and other run folders."""
  runs: dict[str, Run] = {}
  hidden = set()  # prepare jobs: not runs, and not to be found by the walk
  for top in dirs:
    if not os.path.isdir(top):
      runs[os.path.abspath(top)] = Run(top, top, "missing", "no such folder")
      continue
    for root, subdirs, _ in os.walk(top):
      jobs_path = os.path.join(root, JOBS_FILE)
      for job in read_jobs(jobs_path) if os.path.exists(jobs_path) else ():
        path = os.path.abspath(job.workdir)
        if job.phase == PREPARE_PHASE and not include_prepare:
          hidden.add(path)
        else:
          runs.setdefault(path, load_run(job.workdir, job.name, job.meta,
                                         job.done_file))
      subdirs[:] = sorted(
          d for d in subdirs if d not in _SKIP_DIRS
          and os.path.abspath(os.path.join(root, d)) not in hidden)
      if _is_run_dir(root):
        runs.setdefault(os.path.abspath(root), load_run(root))
        subdirs[:] = []
  return sorted(runs.values(), key=lambda r: r.workdir)
