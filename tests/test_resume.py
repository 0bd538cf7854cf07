"""A run killed with SIGKILL and started again ends with the same results."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # three runs of the main command


def _start(workdir, data_dir):
  return subprocess.Popen(
      [sys.executable, "-m", "rapool_jax.main", "--config", "configs/tiny.py",
       "--workdir", workdir, f"--config.data.data_dir={data_dir}"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_when(proc, path, timeout=300) -> str:
  """SIGKILLs ``proc`` once ``path`` exists; returns what it printed."""
  deadline = time.time() + timeout
  while not os.path.exists(path):
    assert proc.poll() is None, f"run ended before {path}: {proc.stdout.read()}"
    assert time.time() < deadline, f"no {path} after {timeout}s"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return proc.stdout.read()


def _keep_checkpoints_upto(stage_dir, step):
  """Deletes the stage's checkpoints after ``step`` (and unfinished writes):
  the state a kill landing right after step ``step``'s save leaves."""
  for name in os.listdir(stage_dir):
    if not (name.isdigit() and int(name) <= step):
      shutil.rmtree(os.path.join(stage_dir, name))


def test_sigkill_then_resume_gives_identical_results(tiny_config, tiny_run,
                                                    tmp_path):
  reference_dir, reference = tiny_run
  workdir = str(tmp_path / "killed")
  data_dir = tiny_config.data.data_dir
  checkpoints = os.path.join(workdir, "checkpoints")
  # Killed inside Step 3 right after its first periodic checkpoint (step 2 of
  # 3), then inside Step 4 right after its own (step 2 of 4): each restart
  # resumes mid-stage, with the optimiser state, step and random stream.
  _kill_when(_start(workdir, data_dir),
             os.path.join(checkpoints, "segmentation", "2"))
  _keep_checkpoints_upto(os.path.join(checkpoints, "segmentation"), 2)
  out = _kill_when(_start(workdir, data_dir),
                   os.path.join(checkpoints, "joint", "2"))
  assert "[segmentation] resumed from checkpoint at step 2\n" in out, out
  _keep_checkpoints_upto(os.path.join(checkpoints, "joint"), 2)
  proc = _start(workdir, data_dir)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out
  assert "[joint] resumed from checkpoint at step 2\n" in out, out
  with open(os.path.join(workdir, "results.json")) as f:
    resumed = json.load(f)
  with open(os.path.join(reference_dir, "results.json")) as f:
    assert resumed == json.load(f)
  assert resumed["rows"] == json.loads(json.dumps(reference["rows"]))
