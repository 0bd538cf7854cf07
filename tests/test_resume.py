"""A run killed with SIGKILL and started again ends with the same results."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import REPO


def _start(workdir, data_dir):
  return subprocess.Popen(
      [sys.executable, "-m", "rapool_jax.main", "--config", "configs/tiny.py",
       "--workdir", workdir, f"--config.data.data_dir={data_dir}"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_when(proc, path, timeout=300):
  deadline = time.time() + timeout
  while not os.path.exists(path):
    assert proc.poll() is None, f"run ended before {path}: {proc.stdout.read()}"
    assert time.time() < deadline, f"no {path} after {timeout}s"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def test_sigkill_then_resume_gives_identical_results(tiny_config, tiny_run,
                                                    tmp_path):
  reference_dir, reference = tiny_run
  workdir = str(tmp_path / "killed")
  data_dir = tiny_config.data.data_dir
  # Kill inside Step 3, right after its first periodic checkpoint, then inside
  # Step 4 before any of its checkpoints exist.
  _kill_when(_start(workdir, data_dir),
             os.path.join(workdir, "checkpoints", "segmentation", "2"))
  _kill_when(_start(workdir, data_dir),
             os.path.join(workdir, "checkpoints", "joint"))
  proc = _start(workdir, data_dir)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out
  assert "resumed from checkpoint" in out
  with open(os.path.join(workdir, "results.json")) as f:
    resumed = json.load(f)
  with open(os.path.join(reference_dir, "results.json")) as f:
    assert resumed == json.load(f)
  assert resumed["rows"] == json.loads(json.dumps(reference["rows"]))
