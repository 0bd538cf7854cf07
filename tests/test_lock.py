"""One writer per workdir: ``checkpoint.hold_workdir`` and the runs that take it."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest

from conftest import REPO
from rapool_jax import checkpoint
from rapool_jax import errors

# A process that holds the lock until it is killed.
HOLDER = """
import sys, time
from rapool_jax import checkpoint
with checkpoint.hold_workdir(sys.argv[1]):
  print("held", flush=True)
  time.sleep(600)
"""


def _main(workdir, data_dir, *extra):
  return subprocess.Popen(
      [sys.executable, "-m", "rapool_jax.main", "--config", "configs/tiny.py",
       "--workdir", workdir, f"--config.data.data_dir={data_dir}", *extra],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _start_holder(workdir):
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, workdir], cwd=REPO,
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def _assert_busy_line(stderr, workdir, pid):
  lines = stderr.strip().splitlines()
  assert len(lines) == 1, stderr
  assert lines[0].startswith("error: ") and workdir in lines[0], stderr
  assert f"pid {pid} on host {socket.gethostname()}" in lines[0], stderr


def test_second_main_on_a_held_workdir_stops_at_once(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  with checkpoint.hold_workdir(workdir):
    t0 = time.time()
    proc = _main(workdir, data_dir)
    _, stderr = proc.communicate(timeout=120)
    elapsed = time.time() - t0
  assert proc.returncode == 2, stderr
  _assert_busy_line(stderr, workdir, os.getpid())
  # It stopped before reading or writing anything of the run's.
  assert sorted(os.listdir(workdir)) == [checkpoint.LOCK_FILE]
  assert elapsed < 60, elapsed


def test_a_sigkilled_holder_leaves_a_lock_the_next_run_takes(tmp_path):
  workdir = str(tmp_path / "run")
  holder = _start_holder(workdir)
  try:
    with pytest.raises(errors.UserError, match=f"pid {holder.pid} on host"):
      with checkpoint.hold_workdir(workdir):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The file is still there, naming the dead process; the lock died with it.
  with open(os.path.join(workdir, checkpoint.LOCK_FILE)) as f:
    assert json.load(f)["pid"] == holder.pid
  with checkpoint.hold_workdir(workdir):
    with open(os.path.join(workdir, checkpoint.LOCK_FILE)) as f:
      assert json.load(f)["pid"] == os.getpid()


def test_the_lock_is_released_when_the_run_ends_or_fails(tmp_path):
  workdir = str(tmp_path / "run")
  with pytest.raises(ArithmeticError):
    with checkpoint.hold_workdir(workdir):
      raise ArithmeticError("a diverged loss")
  with checkpoint.hold_workdir(workdir):
    pass
  checkpoint.check_not_being_written(workdir)


def test_only_process_zero_locks(tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  with checkpoint.hold_workdir(workdir):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    with checkpoint.hold_workdir(workdir):  # no second lock, no error
      pass
  other = str(tmp_path / "other")
  with checkpoint.hold_workdir(other):
    assert not os.path.exists(os.path.join(other, checkpoint.LOCK_FILE))


def test_readers_are_refused_while_a_run_writes(tmp_path):
  workdir = str(tmp_path / "run")
  checkpoint.check_not_being_written(workdir)  # no lock file: nothing to ask
  with checkpoint.hold_workdir(workdir):
    with pytest.raises(errors.UserError, match=(
        f"{workdir} is being written by another run \\(pid {os.getpid()} "
        "on host .*predict reads finished runs only")):
      checkpoint.check_not_being_written(workdir)
  checkpoint.check_not_being_written(workdir)


@pytest.mark.slow  # two runs of the main command
def test_two_mains_on_one_workdir(tiny_run, tmp_path, data_dir):
  reference_dir, _ = tiny_run
  workdir = str(tmp_path / "run")
  first = _main(workdir, data_dir)
  lock = os.path.join(workdir, checkpoint.LOCK_FILE)
  deadline = time.time() + 120
  while True:  # the first run holds the lock once it has written its pid
    try:
      with open(lock) as f:
        if json.load(f)["pid"] == first.pid:
          break
    except (OSError, ValueError):
      pass
    assert first.poll() is None and time.time() < deadline, first.stderr.read()
    time.sleep(0.05)
  t0 = time.time()
  second = _main(workdir, data_dir, "--config.stages.joint.lambda_seg=1")
  _, stderr = second.communicate(timeout=120)
  assert time.time() - t0 < 60
  assert second.returncode == 2, stderr
  _assert_busy_line(stderr, workdir, first.pid)
  assert first.poll() is None, "the first run ended before the second tried"
  out, err = first.communicate(timeout=600)
  assert first.returncode == 0, out + err
  for name in ("results.json", "config.json"):
    with open(os.path.join(workdir, name)) as f, open(
        os.path.join(reference_dir, name)) as g:
      assert json.load(f) == json.load(g), name
