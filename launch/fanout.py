"""Runs a list of main-job invocations: locally in parallel, or as SLURM arrays.

A job is one ``python -m rapool_jax.main --config C --workdir W OVERRIDES``
run. Phase p starts once every job of phase p - 1 ended (-1: building the
data once; 0: shared bases; 1: the runs that link a base's finished stage
checkpoints, ``stages_from``, and so train only the rest). Each job records
``WORKDIR/fanout_status.json`` and appends its output to ``fanout.log``
(``launch/aggregate.py`` reads both); a finished job is skipped, so running
a sweep again resumes it. A SLURM array task runs one job of the
``ROOT/jobs.json`` a launch script wrote:

    python -m launch.fanout run-one --jobs JOBS --phase P --index I
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import queue
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
JOBS_FILE = "jobs.json"
STATUS_FILE = "fanout_status.json"
LOG_FILE = "fanout.log"
SLURM_TEMPLATE = REPO / "launch" / "slurm_array.sh"
PREPARE_PHASE = -1
LINKED_STAGES_FILE = "linked_stages.json"  # read by rapool_jax.checks


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


def prepare_job(root: str, config: str, overrides: Sequence[str]) -> Job:
  """The phase -1 job: builds the data set of ``config`` + ``overrides``."""
  return Job(name="prepare_data", workdir=os.path.join(root, "prepare_data"),
             config=config, overrides=list(overrides), phase=PREPARE_PHASE,
             module="launch.prepare_data", done_file="prepared.json")


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


def phase_jobs(jobs: Sequence[Job], phase: int) -> list[Job]:
  return [j for j in jobs if j.phase == phase]


# ----------------------------------------------------------------------------
# Status of one job's workdir.


def read_status(workdir: str) -> dict | None:
  try:
    with open(os.path.join(workdir, STATUS_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_status(workdir: str, status: dict) -> None:
  path = os.path.join(workdir, STATUS_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(status, f, indent=1)
  os.replace(path + ".tmp", path)  # a reader never sees half a file


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


# ----------------------------------------------------------------------------
# Running one job.


def link_stages(src_workdir: str, dst_workdir: str,
                stages: Sequence[str]) -> None:
  """Hard-links (or copies, across file systems) finished stage checkpoints.

  Hard links rather than symlinks: each run owns its checkpoint folder, so no
  orbax manager ever writes into another run's directory, at no disk cost.
  """
  for stage in stages:
    src = os.path.join(src_workdir, "checkpoints", stage)
    dst = os.path.join(dst_workdir, "checkpoints", stage)
    if os.path.exists(dst):
      continue  # linked by an earlier, interrupted attempt
    if not os.path.isdir(src):
      raise FileNotFoundError(f"{src}: stage {stage!r} has no checkpoints")
    tmp = dst + ".linking"
    shutil.rmtree(tmp, ignore_errors=True)

    def link_or_copy(s, d):
      try:
        os.link(s, d)
      except OSError:
        shutil.copy2(s, d)

    shutil.copytree(src, tmp, copy_function=link_or_copy)
    os.replace(tmp, dst)
  # Says where the stages came from: the main job accepts checkpoints that
  # have no config.json of their own only with this record beside them.
  with open(os.path.join(dst_workdir, LINKED_STAGES_FILE), "w") as f:
    json.dump({"from": os.path.abspath(src_workdir), "stages": list(stages)}, f)


def _link_base(job: Job) -> str | None:
  """Links the stages of ``job.stages_from`` into its workdir; the reason
  where that cannot be done."""
  if not is_finished(Job(name="base", workdir=job.stages_from,
                         config=job.config)):
    return f"base run {job.stages_from} did not finish (see its {LOG_FILE})"
  try:
    link_stages(job.stages_from, job.workdir, job.stages)
  except OSError as e:
    return f"linking stages from {job.stages_from}: {e}"
  return None


def _start_status(job: Job, env: dict | None) -> dict:
  return {"name": job.name, "state": "running", "returncode": None,
          "error": None, "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "command": shlex.join(job.command()), "devices": dict(env or {})}


def run_one(job: Job, env: dict | None = None, force: bool = False,
            quiet: bool = False) -> int:
  """Runs ``job`` and records its status; returns its exit status."""
  say = (lambda *a: None) if quiet else (lambda m: print(m, flush=True))
  if not force and is_finished(job):
    say(f"[fanout] {job.name}: already finished, skipped")
    return 0
  os.makedirs(job.workdir, exist_ok=True)
  status = _start_status(job, env)
  error = _link_base(job) if job.stages_from else None
  if error:
    _write_status(job.workdir, {**status, "state": "failed", "returncode": 1,
                                "error": error})
    say(f"[fanout] {job.name}: FAILED, {error}")
    return 1
  _write_status(job.workdir, status)
  t0 = time.time()
  with open(os.path.join(job.workdir, LOG_FILE), "a") as log:
    log.write(f"\n=== {status['started']} {status['command']}\n")
    log.flush()
    proc = subprocess.run(job.command(), cwd=REPO, stdout=log,
                          stderr=subprocess.STDOUT,
                          env={**os.environ, **(env or {})})
  status.update(state="done" if proc.returncode == 0 else "failed",
                returncode=proc.returncode, wall_s=round(time.time() - t0, 1),
                finished=time.strftime("%Y-%m-%d %H:%M:%S"))
  if proc.returncode == 0 and not os.path.exists(
      os.path.join(job.workdir, job.done_file)):
    status.update(state="failed", error=f"exit status 0 but no {job.done_file}")
  _write_status(job.workdir, status)
  if status["state"] == "done":
    say(f"[fanout] {job.name}: done ({status['wall_s']:.0f} s)")
    return 0
  say(f"[fanout] {job.name}: FAILED (exit status {proc.returncode}); last "
      f"lines of {os.path.join(job.workdir, LOG_FILE)}:\n"
      f"{log_tail(job.workdir)}")
  return proc.returncode or 1


# ----------------------------------------------------------------------------
# Local fan-out.


def run_local(jobs: Sequence[Job], parallel: int = 1,
              gpus: Sequence[str] = (),
              device_env: str = "CUDA_VISIBLE_DEVICES",
              force: bool = False) -> dict[str, int]:
  """Runs phases in order, each over ``parallel`` slots (one per GPU if given).

  Returns ``{job name: exit status}``. A failed prepare job stops everything;
  other failures are recorded and the remaining jobs still run (later-phase
  jobs that need a failed base record that as their failure).
  """
  slots = [{device_env: g} for g in gpus] if gpus else [{}] * max(1, parallel)
  free: queue.Queue = queue.Queue()
  for s in slots:
    free.put(s)
  results: dict[str, int] = {}
  lock = threading.Lock()

  def work(job):
    env = free.get()
    try:
      where = f" on {device_env}={env[device_env]}" if env else ""
      print(f"[fanout] {job.name}: start{where}", flush=True)
      rc = run_one(job, env=env, force=force)
    finally:
      free.put(env)
    with lock:
      results[job.name] = rc

  for phase in sorted({j.phase for j in jobs}):
    todo = phase_jobs(jobs, phase)
    with concurrent.futures.ThreadPoolExecutor(len(slots)) as pool:
      for f in [pool.submit(work, j) for j in todo]:
        f.result()
    if phase == PREPARE_PHASE and any(results[j.name] for j in todo):
      raise RuntimeError("preparing the data failed; see "
                         f"{os.path.join(todo[0].workdir, LOG_FILE)}")
  return results


# ----------------------------------------------------------------------------
# SLURM.


def slurm_scripts(jobs_path: str, out_dir: str, *, name: str = "rapool",
                  sbatch_extra: str = "", setup: str = "",
                  max_parallel: int = 0, python: str = sys.executable,
                  template: str | os.PathLike = SLURM_TEMPLATE
                  ) -> list[tuple[int, str]]:
  """Writes one array script per phase of a job list; returns (phase, path)."""
  jobs = read_jobs(jobs_path)
  with open(template) as f:
    text = f.read()
  os.makedirs(out_dir, exist_ok=True)
  log_dir = os.path.join(os.path.abspath(out_dir), "logs")
  os.makedirs(log_dir, exist_ok=True)
  scripts = []
  for phase in sorted({j.phase for j in jobs}):
    n = len(phase_jobs(jobs, phase))
    tag = "prepare" if phase == PREPARE_PHASE else f"phase{phase}"
    values = {
        "@NAME@": f"{name}-{tag}",
        "@ARRAY@": f"0-{n - 1}" + (f"%{max_parallel}" if max_parallel else ""),
        "@LOG_DIR@": log_dir,
        "@SBATCH_EXTRA@": "\n".join(f"#SBATCH {a}"
                                    for a in shlex.split(sbatch_extra)),
        "@REPO@": shlex.quote(str(REPO)),
        "@SETUP@": setup,
        "@PYTHON@": shlex.quote(python),
        "@JOBS@": shlex.quote(os.path.abspath(jobs_path)),
        "@PHASE@": str(phase),
    }
    script = text
    for key, value in values.items():
      script = script.replace(key, value)
    path = os.path.join(out_dir, f"{tag}.sbatch")
    with open(path, "w") as f:
      f.write(script)
    os.chmod(path, 0o755)
    scripts.append((phase, path))
  return scripts


def submit_slurm(scripts: Sequence[tuple[int, str]]) -> list[str]:
  """sbatch's each phase after the previous one ended (``afterany``: a failed
  base still lets the next phase run and record why it could not start)."""
  ids, previous = [], None
  for _, path in scripts:
    cmd = ["sbatch", "--parsable"]
    if previous:
      cmd.append(f"--dependency=afterany:{previous}")
    out = subprocess.run(cmd + [path], check=True, capture_output=True,
                         text=True).stdout
    previous = out.strip().split(";")[0]
    ids.append(previous)
    print(f"[fanout] submitted {path} as job {previous}", flush=True)
  return ids


# ----------------------------------------------------------------------------
# The runner flags shared by the launch scripts.


def add_runner_args(parser: argparse.ArgumentParser) -> None:
  g = parser.add_argument_group("where the jobs run")
  g.add_argument("--parallel", type=int, default=1,
                 help="local processes at a time (CPU); ignored with --gpus")
  g.add_argument("--gpus", default="",
                 help="comma-separated accelerator ids: one process per id")
  g.add_argument("--device-env", default="CUDA_VISIBLE_DEVICES",
                 help="variable that pins a process to its id (TPU: "
                      "TPU_VISIBLE_CHIPS)")
  g.add_argument("--slurm", action="store_true",
                 help="write SLURM array scripts (ROOT/slurm/) instead of "
                      "running locally")
  g.add_argument("--submit", action="store_true",
                 help="with --slurm: sbatch them")
  g.add_argument("--sbatch", default="", help='extra #SBATCH lines, e.g. '
                 '"--partition=gpu --time=24:00:00"')
  g.add_argument("--setup", default="", help="shell lines run before each "
                 "array task (module load ..., source venv/bin/activate)")
  g.add_argument("--max-parallel", type=int, default=0,
                 help="with --slurm: array tasks running at once (0 = no cap)")
  g.add_argument("--python", default=sys.executable,
                 help="with --slurm: interpreter on the compute nodes")
  g.add_argument("--slurm-template", default=str(SLURM_TEMPLATE),
                 help="with --slurm: your copy of launch/slurm_array.sh")
  g.add_argument("--dry-run", action="store_true",
                 help="write ROOT/jobs.json, print the commands, run nothing")
  g.add_argument("--force", action="store_true",
                 help="rerun jobs that already finished")
  g.add_argument("--report-only", action="store_true",
                 help="run nothing; rebuild the tables from finished runs")
  g.add_argument("--compile-cache", default="auto",
                 help="JAX persistent compilation cache the jobs share "
                      "(default ROOT/jax_cache; '' = none): runs of one sweep "
                      "compile the same evaluation and RankOpt programs")


def execute(args: argparse.Namespace, jobs: Sequence[Job], root: str) -> bool:
  """Writes ROOT/jobs.json and runs the jobs as ``args`` say.

  Returns True when the jobs ran here (the caller can build its tables now).
  """
  path = os.path.join(root, JOBS_FILE)
  cache = (os.path.join(root, "jax_cache") if args.compile_cache == "auto"
           else args.compile_cache)
  if cache:
    jobs = [with_compile_cache(j, os.path.abspath(cache)) for j in jobs]
  write_jobs(path, jobs)
  if args.report_only:
    return True
  if args.dry_run:
    for j in jobs:
      link = (f"  # after linking {j.stages} from {j.stages_from}"
              if j.stages_from else "")
      print(f"[phase {j.phase}] {shlex.join(j.command())}{link}")
    print(f"wrote {path}")
    return False
  if args.slurm:
    scripts = slurm_scripts(path, os.path.join(root, "slurm"),
                            name=Path(root).name,
                            sbatch_extra=args.sbatch, setup=args.setup,
                            max_parallel=args.max_parallel, python=args.python,
                            template=args.slurm_template)
    for _, s in scripts:
      print(f"wrote {s}")
    if args.submit:
      submit_slurm(scripts)
    else:
      print("submit them in order, each with --dependency=afterany:<previous "
            "job id>, or rerun with --submit")
    print(f"when they have ended: rerun this command with --report-only, or "
          f"python -m launch.aggregate {root}")
    return False
  gpus = [g for g in args.gpus.split(",") if g]
  results = run_local(jobs, parallel=args.parallel, gpus=gpus,
                      device_env=args.device_env, force=args.force)
  failed = sorted(n for n, rc in results.items() if rc)
  if failed:
    print(f"[fanout] {len(failed)} of {len(results)} jobs failed: {failed}",
          flush=True)
  return True


def with_compile_cache(job: Job, cache_dir: str) -> Job:
  """Adds ``--config.systems.compilation_cache_dir`` unless the job sets it already."""
  key = "--config.systems.compilation_cache_dir"
  if job.module != "rapool_jax.main" or any(
      o.split("=", 1)[0] == key for o in job.overrides):
    return job
  return dataclasses.replace(
      job, overrides=job.overrides + [f"{key}={cache_dir}"])


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """``[script args] -- [--config.x=y ...]`` -> (script args, overrides)."""
  argv = list(argv)
  if "--" in argv:
    i = argv.index("--")
    return argv[:i], argv[i + 1:]
  return argv, []


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p_one = sub.add_parser("run-one", help="run job INDEX of PHASE (array task)")
  p_one.add_argument("--jobs", required=True)
  p_one.add_argument("--phase", type=int, required=True)
  p_one.add_argument("--index", type=int, required=True)
  p_one.add_argument("--force", action="store_true")
  args = parser.parse_args(argv)
  jobs = phase_jobs(read_jobs(args.jobs), args.phase)
  if not 0 <= args.index < len(jobs):
    print(f"--index {args.index}: phase {args.phase} has {len(jobs)} jobs",
          file=sys.stderr)
    return 2
  return run_one(jobs[args.index], force=args.force)


if __name__ == "__main__":
  sys.exit(main())
