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
  """A saved tree as ``train.save_train_state`` lays it out; random floats,
  which zstd stores raw, as it stores a network's weights."""
  rng = np.random.default_rng(seed)
  return {"variables": {"params": {"w": rng.normal(size=(64, 64)).astype(
      np.float32)}, "batch_stats": {"mean": np.zeros(64, np.float32)}},
          "opt_state": {"trace": rng.normal(size=(64, 64)).astype(np.float32)},
          "step": np.int32(3)}


def _overwrite(paths, offset=None):
  """16 bytes of each file, from ``offset`` (default: its middle)."""
  assert paths
  for path in paths:
    with open(path, "r+b") as f:
      f.seek(os.path.getsize(path) // 2 if offset is None else offset)
      f.write(b"\xff" * 16)


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


# (what is damaged, under the step's folder; what the line says it found)
DAMAGE = [
    ("state/ocdbt.process_0/d/*", "its opt_state, variables differ from what "
     "was written"),   # the weights' own bytes: read back without an error
    ("state/d/*", "Error decoding b-tree node"),   # the OCDBT index
    ("meta/metadata", "UnicodeDecodeError"),
]


@pytest.mark.parametrize("damaged,found", DAMAGE, ids=[d for d, _ in DAMAGE])
def test_a_damaged_checkpoint_is_named_in_one_line(workdir, damaged, found,
                                                   capfd):
  want = _restore(workdir)
  step3 = os.path.join(ckpt_lib.stage_dir(workdir, STAGE), "3")
  _overwrite(glob.glob(os.path.join(step3, damaged)))
  with pytest.raises(ckpt_lib.UnreadableCheckpoint) as info:
    with ckpt_lib.manager(workdir, STAGE) as mngr:
      ckpt_lib.latest_meta(mngr)
      ckpt_lib.restore_state(mngr, 3, _target())
  message = str(info.value)
  assert message.startswith(f"{step3}: the checkpoint of stage 'joint' at "
                            "step 3 does not read back ("), message
  assert message.endswith("); delete that folder, and the training command "
                          "resumes the stage from its checkpoint at step 2")
  assert found in message and len(message) < 400, message
  assert "Event loop is closed" not in capfd.readouterr().err
  # The way back, as the line says: the step before reads as it was saved.
  shutil.rmtree(step3)
  jax.tree.map(np.testing.assert_array_equal, _restore(workdir, step=2), want)


def test_a_damaged_finished_stage_is_named_to_predict(workdir):
  _overwrite(glob.glob(os.path.join(ckpt_lib.stage_dir(workdir, STAGE), "3",
                                    "state", "ocdbt.process_0", "d", "*")))
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
