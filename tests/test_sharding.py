"""Data parallelism: 1 device, 8 simulated devices and 2 processes agree."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

SCRIPT = str(REPO / "tests" / "multidevice_train.py")

pytestmark = pytest.mark.slow  # each test trains in 2-3 processes


def _env(**extra):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.update(extra)
  return env


def _compare(a_path, b_path):
  a, b = np.load(a_path), np.load(b_path)
  assert set(a.files) == set(b.files)
  for name in a.files:
    if name == "devices":
      continue
    # Relative to each tensor's scale: round-off from a different reduction
    # order, not a different computation.
    scale = float(np.abs(a[name]).max()) + 1e-6
    np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-3 * scale,
                               err_msg=name)


def _train(out, data_dir, workdir, env):
  proc = subprocess.run([sys.executable, SCRIPT, out, data_dir, workdir],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def one_device(data_dir, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("one_device")
  out = str(tmp / "one.npz")
  _train(out, data_dir, str(tmp / "w"), _env())
  return out


def test_one_and_eight_devices_end_with_the_same_parameters(data_dir, tmp_path,
                                                            one_device):
  one, eight = one_device, str(tmp_path / "eight.npz")
  _train(eight, data_dir, str(tmp_path / "w8"),
         _env(XLA_FLAGS="--xla_force_host_platform_device_count=8"))
  assert int(np.load(one)["devices"]) == 1
  assert int(np.load(eight)["devices"]) == 8
  _compare(one, eight)


def test_two_processes_match_one_process(data_dir, tmp_path, one_device):
  one = one_device
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  two = str(tmp_path / "two.npz")
  procs = [subprocess.Popen(
      [sys.executable, SCRIPT, two, data_dir, str(tmp_path / "w2")], cwd=REPO,
      env=_env(RAPOOL_DISTRIBUTED="1", JAX_PLATFORMS="cpu",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo"),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  assert int(np.load(two)["devices"]) == 2
  _compare(one, two)
