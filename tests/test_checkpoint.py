"""A checkpoint whose files were damaged stops the run with one line naming
the stage, the step and the way back; it is never restored as if whole."""

import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
from rapool_jax import checkpoint as ckpt_lib

STAGE = "joint"


def _state(seed=0):
  """A saved tree as ``train.save_train_state`` lays it out. The weights
  ``w`` are random bits, which zstd stores raw: the test finds them in the
  files (a network's floats are compressed a little, and damage to them
  decodes as silently)."""
  rng = np.random.default_rng(seed)
  return {"variables": {"params": {"w": rng.integers(
      0, 2**32, size=(64, 64), dtype=np.uint32)},
                        "batch_stats": {"mean": np.zeros(64, np.float32)}},
          "opt_state": {"trace": rng.normal(size=(64, 64)).astype(np.float32)},
          "step": np.int32(3)}


def _overwrite(paths, offset=None):
  """16 bytes of each file, from ``offset`` (default: its middle)."""
  assert paths
  for path in paths:
    with open(path, "r+b") as f:
      f.seek(os.path.getsize(path) // 2 if offset is None else offset)
      f.write(b"\xff" * 16)


def _overwrite_weights(step_dir):
  """16 bytes of the saved weights ``w``, found where they are stored."""
  needle = _state()["variables"]["params"]["w"].tobytes()[8192:8208]
  hits = 0
  for path in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"),
                        recursive=True):
    with open(path, "rb") as f:
      at = f.read().find(needle)
    if at >= 0:
      _overwrite([path], at)
      hits += 1
  assert hits == 1, "the weights are not stored raw (compressed?)"


@pytest.fixture
def workdir(tmp_path):
  """A stage with checkpoints at steps 2 and 3 (its last, done)."""
  state = jax.tree.map(jax.numpy.asarray, _state())
  with ckpt_lib.manager(str(tmp_path), STAGE) as mngr:
    ckpt_lib.save(mngr, 2, state, {"step": 2, "done": False})
    ckpt_lib.save(mngr, 3, state, {"step": 3, "done": True})
  return str(tmp_path)


def _target():
  """What a resumed stage restores into: arrays of the saved shapes."""
  return jax.tree.map(jax.numpy.asarray, _state(seed=1))


def _restore(workdir, step=3):
  with ckpt_lib.manager(workdir, STAGE) as mngr:
    return ckpt_lib.restore_state(mngr, step, _target())


# (what is damaged in the step's folder; what the line says it found)
DAMAGE = [
    # The weights' own bytes: read back without an error.
    ("weights", _overwrite_weights, "its variables differ from what was "
     "written"),
    # The OCDBT index, from its header: its middle may hold nothing read.
    ("index", lambda step: _overwrite(
        glob.glob(os.path.join(step, "state", "d", "*")), 0),
     "Error decoding b-tree node"),
    ("meta", lambda step: _overwrite([os.path.join(step, "meta", "metadata")]),
     "UnicodeDecodeError"),
]


@pytest.mark.parametrize("damage,found", [d[1:] for d in DAMAGE],
                         ids=[d[0] for d in DAMAGE])
def test_a_damaged_checkpoint_is_named_in_one_line(workdir, damage, found,
                                                   capfd):
  want = _restore(workdir)
  step3 = os.path.join(ckpt_lib.stage_dir(workdir, STAGE), "3")
  damage(step3)
  with pytest.raises(ckpt_lib.UnreadableCheckpoint) as info:
    with ckpt_lib.manager(workdir, STAGE) as mngr:
      ckpt_lib.latest_meta(mngr)
      ckpt_lib.restore_state(mngr, 3, _target())
  message = str(info.value)
  assert message.startswith(f"{step3}: the checkpoint of stage 'joint' at "
                            "step 3 does not read back ("), message
  assert message.endswith("); delete that folder, and the training command "
                          "resumes the stage from its checkpoint at step 2")
  why = message.split(" does not read back (", 1)[1].rsplit("); delete", 1)[0]
  # The innermost causes, not TensorStore's kilobytes of JSON spec.
  assert found in why and len(why) < 400 and "_spec" not in why, message
  assert "Event loop is closed" not in capfd.readouterr().err
  # The way back, as the line says: the step before reads as it was saved.
  shutil.rmtree(step3)
  jax.tree.map(np.testing.assert_array_equal, _restore(workdir, step=2), want)


def test_a_damaged_finished_stage_is_named_to_predict(workdir):
  _overwrite_weights(os.path.join(ckpt_lib.stage_dir(workdir, STAGE), "3"))
  with pytest.raises(ckpt_lib.UnreadableCheckpoint, match="its variables "
                     "differ from what was written"):
    ckpt_lib.restore_variables(workdir, STAGE, _target()["variables"])


def test_checkpoints_without_a_digest_still_restore(workdir):
  """Workdirs written before the digest resume as they did."""
  meta = os.path.join(ckpt_lib.stage_dir(workdir, STAGE), "3", "meta",
                      "metadata")
  with open(meta) as f:
    saved = json.load(f)
  del saved["digest"]
  with open(meta, "w") as f:
    json.dump(saved, f)
  jax.tree.map(np.testing.assert_array_equal, _restore(workdir), _state())


@pytest.mark.slow  # two runs of the main command on a copy of a tiny run
def test_a_run_with_a_damaged_stage_stops_then_resumes(tiny_run, tmp_path,
                                                       data_dir):
  run_dir = str(tmp_path / "run")
  shutil.copytree(tiny_run[0], run_dir)
  stage = ckpt_lib.stage_dir(run_dir, "classification")
  last = str(max(int(s) for s in os.listdir(stage) if s.isdigit()))
  _overwrite(glob.glob(os.path.join(stage, last, "state", "ocdbt.process_0",
                                    "d", "*")))
  command = [sys.executable, "-m", "rapool_jax.main", "--config",
             "configs/tiny.py", "--workdir", run_dir,
             f"--config.data.data_dir={data_dir}"]
  out = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 2, out.stderr
  # The line ends stderr, with no traceback (TFDS warns above it on
  # synthetic data).
  assert "Traceback" not in out.stderr, out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith(
      f"error: UnreadableCheckpoint: {os.path.join(stage, last)}: the "
      "checkpoint of stage 'classification' at step"), out.stderr
  shutil.rmtree(os.path.join(stage, last))   # what the line says to do
  out = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr
  with open(os.path.join(run_dir, "results.json")) as f:
    resumed = json.load(f)
  with open(os.path.join(tiny_run[0], "results.json")) as f:
    assert resumed == json.load(f)
