"""Runs a list of main-job invocations: locally in parallel, or as SLURM arrays.

Phases run in order (launch/README.md, "Shared stages"); each job records
``WORKDIR/fanout_status.json`` and ``fanout.log``, and a finished job is
skipped. A SLURM array task runs one job of ``ROOT/jobs.json``:

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
import time
from pathlib import Path
from typing import Sequence

# The job and status files live where the reports read them back; they stay
# names of this module too (fanout.Job, fanout.read_status, ...).
from rapool_jax import errors
from rapool_jax.analysis.run_dirs import (  # noqa: F401
    JOBS_FILE, LOG_FILE, PREPARE_PHASE, STATUS_FILE, Job, is_finished,
    log_tail, read_jobs, read_status, write_jobs)

REPO = Path(__file__).resolve().parents[1]
SLURM_TEMPLATE = REPO / "launch" / "slurm_array.sh"
LINKED_STAGES_FILE = "linked_stages.json"  # read by rapool_jax.checks


def prepare_job(root: str, config: str, overrides: Sequence[str]) -> Job:
  """The phase -1 job: builds the data set of ``config`` + ``overrides``."""
  return Job(name="prepare_data", workdir=os.path.join(root, "prepare_data"),
             config=config, overrides=list(overrides), phase=PREPARE_PHASE,
             module="launch.prepare_data", done_file="prepared.json")


def phase_jobs(jobs: Sequence[Job], phase: int) -> list[Job]:
  return [j for j in jobs if j.phase == phase]


def _write_status(workdir: str, status: dict) -> None:
  path = os.path.join(workdir, STATUS_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(status, f, indent=1)
  os.replace(path + ".tmp", path)  # a reader never sees half a file


def _link_or_copy(src: str, dst: str) -> None:
  try:
    os.link(src, dst)
  except OSError:  # across file systems
    shutil.copy2(src, dst)


def link_stages(src_workdir: str, dst_workdir: str,
                stages: Sequence[str]) -> None:
  """Hard-links (or copies) finished stage checkpoints: each run owns its
  checkpoint folder, so no orbax manager writes into another run's."""
  for stage in stages:
    src = os.path.join(src_workdir, "checkpoints", stage)
    dst = os.path.join(dst_workdir, "checkpoints", stage)
    if os.path.exists(dst):
      continue  # linked by an earlier, interrupted attempt
    if not os.path.isdir(src):
      raise FileNotFoundError(f"{src}: stage {stage!r} has no checkpoints")
    shutil.rmtree(dst + ".linking", ignore_errors=True)
    shutil.copytree(src, dst + ".linking", copy_function=_link_or_copy)
    os.replace(dst + ".linking", dst)
  # The main job accepts checkpoints without a config.json of their own only
  # with this record of where they came from beside them.
  with open(os.path.join(dst_workdir, LINKED_STAGES_FILE), "w") as f:
    json.dump({"from": os.path.abspath(src_workdir), "stages": list(stages)}, f)


def _link_base(job: Job) -> str | None:
  """Links ``job.stages_from``'s stages; the reason where it cannot."""
  if not is_finished(Job("base", job.stages_from, job.config)):
    return f"base run {job.stages_from} did not finish (see its {LOG_FILE})"
  try:
    link_stages(job.stages_from, job.workdir, job.stages)
  except OSError as e:
    return f"linking stages from {job.stages_from}: {e}"
  return None


def _run(job: Job, env: dict | None, status: dict) -> int:
  """Runs ``job``'s command, its output appended to its log."""
  with open(os.path.join(job.workdir, LOG_FILE), "a") as log:
    log.write(f"\n=== {status['started']} {status['command']}\n")
    log.flush()
    return subprocess.run(job.command(), cwd=REPO, stdout=log,
                          stderr=subprocess.STDOUT,
                          env={**os.environ, **(env or {})}).returncode


def run_one(job: Job, env: dict | None = None, force: bool = False,
            quiet: bool = False) -> int:
  """Runs ``job`` and records its status; returns its exit status."""
  say = (lambda *a: None) if quiet else (lambda m: print(m, flush=True))
  if not force and is_finished(job):
    say(f"[fanout] {job.name}: already finished, skipped")
    return 0
  os.makedirs(job.workdir, exist_ok=True)
  status = {"name": job.name, "state": "running", "returncode": None,
            "error": None, "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": shlex.join(job.command()), "devices": dict(env or {})}
  error = _link_base(job) if job.stages_from else None
  if error:
    _write_status(job.workdir, {**status, "state": "failed", "returncode": 1,
                                "error": error})
    say(f"[fanout] {job.name}: FAILED, {error}")
    return 1
  _write_status(job.workdir, status)
  t0 = time.time()
  rc = _run(job, env, status)
  status.update(state="done" if rc == 0 else "failed", returncode=rc,
                wall_s=round(time.time() - t0, 1),
                finished=time.strftime("%Y-%m-%d %H:%M:%S"))
  if rc == 0 and not os.path.exists(os.path.join(job.workdir, job.done_file)):
    status.update(state="failed", error=f"exit status 0 but no {job.done_file}")
  _write_status(job.workdir, status)
  if status["state"] == "done":
    say(f"[fanout] {job.name}: done ({status['wall_s']:.0f} s)")
    return 0
  say(f"[fanout] {job.name}: FAILED (exit status {rc}); last lines of "
      f"{os.path.join(job.workdir, LOG_FILE)}:\n{log_tail(job.workdir)}")
  return rc or 1


def run_local(jobs: Sequence[Job], parallel: int = 1,
              gpus: Sequence[str] = (),
              device_env: str = "CUDA_VISIBLE_DEVICES",
              force: bool = False) -> dict[str, int]:
  """Runs phases in order, each over ``parallel`` slots (one per GPU if
  given); ``{job name: exit status}``. A failed prepare job stops
  everything; a job whose base failed records that as its failure."""
  slots = [{device_env: g} for g in gpus] if gpus else [{}] * max(1, parallel)
  free: queue.Queue = queue.Queue()
  for s in slots:
    free.put(s)
  results: dict[str, int] = {}

  def work(job):
    env = free.get()
    try:
      where = f" on {device_env}={env[device_env]}" if env else ""
      print(f"[fanout] {job.name}: start{where}", flush=True)
      results[job.name] = run_one(job, env=env, force=force)
    finally:
      free.put(env)

  for phase in sorted({j.phase for j in jobs}):
    todo = phase_jobs(jobs, phase)
    with concurrent.futures.ThreadPoolExecutor(len(slots)) as pool:
      for f in [pool.submit(work, j) for j in todo]:
        f.result()
    if phase == PREPARE_PHASE and any(results[j.name] for j in todo):
      raise errors.UserError("preparing the data failed; see "
                         f"{os.path.join(todo[0].workdir, LOG_FILE)}")
  return results


def slurm_scripts(jobs_path: str, out_dir: str, *, name: str = "rapool",
                  sbatch_extra: str = "", setup: str = "",
                  max_parallel: int = 0, python: str = sys.executable,
                  template: str | os.PathLike = SLURM_TEMPLATE
                  ) -> list[tuple[int, str]]:
  """Writes one array script per phase of a job list; returns (phase, path)."""
  jobs = read_jobs(jobs_path)
  with open(template) as f:
    text = f.read()
  log_dir = os.path.join(os.path.abspath(out_dir), "logs")
  os.makedirs(log_dir, exist_ok=True)
  scripts = []
  for phase in sorted({j.phase for j in jobs}):
    tag = "prepare" if phase == PREPARE_PHASE else f"phase{phase}"
    script = text
    for key, value in {
        "@NAME@": f"{name}-{tag}",
        "@ARRAY@": f"0-{len(phase_jobs(jobs, phase)) - 1}" + (
            f"%{max_parallel}" if max_parallel else ""),
        "@LOG_DIR@": log_dir,
        "@SBATCH_EXTRA@": "\n".join(f"#SBATCH {a}"
                                    for a in shlex.split(sbatch_extra)),
        "@REPO@": shlex.quote(str(REPO)), "@SETUP@": setup,
        "@PYTHON@": shlex.quote(python),
        "@JOBS@": shlex.quote(os.path.abspath(jobs_path)),
        "@PHASE@": str(phase)}.items():
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
    dep = [f"--dependency=afterany:{previous}"] if previous else []
    previous = subprocess.run(
        ["sbatch", "--parsable", *dep, path], check=True, capture_output=True,
        text=True).stdout.strip().split(";")[0]
    ids.append(previous)
    print(f"[fanout] submitted {path} as job {previous}", flush=True)
  return ids


RUNNER_FLAGS = (  # (flag, default or action, help): every script's runner flags
    ("--parallel", 1, "local processes at a time (CPU); ignored with --gpus"),
    ("--gpus", "", "comma-separated accelerator ids: one process per id"),
    ("--device-env", "CUDA_VISIBLE_DEVICES",
     "variable that pins a process to its id (TPU: TPU_VISIBLE_CHIPS)"),
    ("--slurm", "store_true",
     "write SLURM array scripts (ROOT/slurm/) instead of running locally"),
    ("--submit", "store_true", "with --slurm: sbatch them"),
    ("--sbatch", "", 'extra #SBATCH lines, e.g. "--partition=gpu '
     '--time=24:00:00"'),
    ("--setup", "", "shell lines run before each array task (module load ..., "
     "source venv/bin/activate)"),
    ("--max-parallel", 0,
     "with --slurm: array tasks running at once (0 = no cap)"),
    ("--python", sys.executable, "with --slurm: interpreter on the compute "
     "nodes"),
    ("--slurm-template", str(SLURM_TEMPLATE),
     "with --slurm: your copy of launch/slurm_array.sh"),
    ("--dry-run", "store_true",
     "write ROOT/jobs.json, print the commands, run nothing"),
    ("--force", "store_true", "rerun jobs that already finished"),
    ("--report-only", "store_true",
     "run nothing; rebuild the tables from finished runs"),
    ("--compile-cache", "auto", "JAX persistent compilation cache the jobs "
     "share (default ROOT/jax_cache; '' = none): runs of one sweep compile "
     "the same evaluation and RankOpt programs"))


def add_runner_args(parser: argparse.ArgumentParser) -> None:
  g = parser.add_argument_group("where the jobs run")
  for flag, default, text in RUNNER_FLAGS:
    if default == "store_true":
      g.add_argument(flag, action="store_true", help=text)
    else:
      g.add_argument(flag, type=type(default), default=default, help=text)


def _slurm(args: argparse.Namespace, path: str, root: str) -> None:
  scripts = slurm_scripts(path, os.path.join(root, "slurm"),
                          name=Path(root).name, sbatch_extra=args.sbatch,
                          setup=args.setup, max_parallel=args.max_parallel,
                          python=args.python, template=args.slurm_template)
  for _, s in scripts:
    print(f"wrote {s}")
  if args.submit:
    submit_slurm(scripts)
  else:
    print("submit them in order, each with --dependency=afterany:<previous "
          "job id>, or rerun with --submit")
  print(f"when they have ended: rerun this command with --report-only, or "
        f"python -m launch.aggregate {root}")


def execute(args: argparse.Namespace, jobs: Sequence[Job], root: str) -> bool:
  """Writes ROOT/jobs.json and runs the jobs as ``args`` say; True when they
  ran here (the caller can build its tables now)."""
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
    _slurm(args, path, root)
    return False
  results = run_local(jobs, parallel=args.parallel,
                      gpus=[g for g in args.gpus.split(",") if g],
                      device_env=args.device_env, force=args.force)
  failed = sorted(n for n, rc in results.items() if rc)
  if failed:
    print(f"[fanout] {len(failed)} of {len(results)} jobs failed: {failed}",
          flush=True)
  return True


def with_compile_cache(job: Job, cache_dir: str) -> Job:
  """Adds ``--config.systems.compilation_cache_dir`` unless the job sets it."""
  key = "--config.systems.compilation_cache_dir"
  if job.module != "rapool_jax.main" or any(
      o.split("=", 1)[0] == key for o in job.overrides):
    return job
  return dataclasses.replace(
      job, overrides=job.overrides + [f"{key}={cache_dir}"])


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """``[script args] -- [--config.x=y ...]`` -> (script args, overrides)."""
  argv = list(argv)
  i = argv.index("--") if "--" in argv else len(argv)
  return argv[:i], argv[i + 1:]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p_one = sub.add_parser("run-one", help="run job INDEX of PHASE (array task)")
  for flag in ("--jobs", "--phase", "--index"):
    p_one.add_argument(flag, required=True, type=str if flag == "--jobs"
                       else int)
  p_one.add_argument("--force", action="store_true")
  args = parser.parse_args(argv)
  jobs = phase_jobs(read_jobs(args.jobs), args.phase)
  if not 0 <= args.index < len(jobs):
    print(f"--index {args.index}: phase {args.phase} has {len(jobs)} jobs",
          file=sys.stderr)
    return 2
  return run_one(jobs[args.index], force=args.force)


if __name__ == "__main__":
  with errors.one_line_errors():
    sys.exit(main())
