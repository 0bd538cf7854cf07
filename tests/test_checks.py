"""Bad input stops before the first training step with one line naming it;
re-runs and resumes never mix configs or data (issue 23)."""

import copy
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import zipfile

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import isic_fixtures as fx
from conftest import REPO
from rapool_jax import checks
from rapool_jax import errors
from rapool_jax import evaluate
from rapool_jax import predict
from rapool_jax import provenance
from rapool_jax import run
from rapool_jax import sharding
from rapool_jax import train
from rapool_jax.data import isic2017
from rapool_jax.data import pipeline


def _fails_before_training(config, workdir, capsys, *contains):
  with pytest.raises(errors.UserError) as info:
    run.train_and_evaluate(config, str(workdir))
  message = str(info.value)
  assert "\n" not in message, message
  for text in contains:
    assert text in message, message
  assert "step" not in capsys.readouterr().out
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  return message


# ----------------------------------------------------------------------------
# Config values and stage rules: checked before the data is built.


@pytest.mark.parametrize("rules,message", [
    # What --config.stages.joint.trainable=foo makes of the word.
    (("foo",), "config.stages.joint.trainable=('foo',): expected pairs"),
    ((("(", "train"),), "rule '(' is not a regular expression"),
    ((("seg_conv/.*", "trian"), (".*", "freeze")), "'trian'"),
])
def test_malformed_trainable_rules_are_named(tiny_config, tmp_path, capsys,
                                             rules, message):
  tiny_config.stages.joint.trainable = rules
  _fails_before_training(tiny_config, tmp_path, capsys, message)


def test_trainable_rules_must_cover_every_parameter(tiny_config, tmp_path,
                                                    capsys):
  tiny_config.stages.joint.trainable = (("backbone/.*", "train"),)
  _fails_before_training(tiny_config, tmp_path, capsys,
                         "config.stages.joint.trainable", "classifier")


def test_unsupported_dtype_names_the_key(tiny_config, tmp_path, capsys):
  tiny_config.model.dtype = "float16"
  _fails_before_training(tiny_config, tmp_path, capsys,
                         "config.model.dtype='float16'", "bfloat16")


def test_missing_weights_file_is_named(tiny_config, tmp_path, capsys):
  tiny_config.model.pretrained = str(tmp_path / "resnet.safetensors")
  _fails_before_training(tiny_config, tmp_path, capsys,
                         "config.model.pretrained=", "no such file")


def test_pth_without_torch_says_how_to_install(tiny_config, tmp_path, capsys,
                                               monkeypatch):
  weights = tmp_path / "resnet50.pth"
  weights.write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails
  tiny_config.model.pretrained = str(weights)
  _fails_before_training(tiny_config, tmp_path / "run", capsys, str(weights),
                         "pip install torch")


def test_threshold_split_must_be_one_of_the_runs_splits(tiny_config, tmp_path,
                                                        capsys):
  tiny_config.rankopt.threshold_split = "valid"
  _fails_before_training(tiny_config, tmp_path, capsys,
                         "config.rankopt.threshold_split='valid'")


# ----------------------------------------------------------------------------
# Splits: present, with melanomas and other lesions.


def test_split_with_one_class_fails_before_training(tiny_config, tmp_path,
                                                    capsys):
  tiny_config.data.num_validation = 1   # one image: one class
  _fails_before_training(tiny_config, tmp_path, capsys,
                         "config.data.val_split='validation'", "both")


@pytest.fixture
def isic_train_only(tmp_path, tiny_config):
  """A data config on fake ISIC files with a training split only."""
  manual = tmp_path / "manual"
  fx.write_split(manual, fx.make_split("Training"))
  data = tiny_config.data
  data.name, data.manual_dir = "isic2017", str(manual)
  data.data_dir = str(tmp_path / "tfds")
  data.image_size = data.crop_size = 16
  data.val_split, data.eval_split = "", "test"
  return data


def test_missing_split_names_the_key_and_the_files(isic_train_only):
  with pytest.raises(errors.UserError) as info:
    pipeline.make_builder(isic_train_only)
  message = str(info.value)
  assert message.startswith("config.data.eval_split='test'"), message
  assert "ISIC-2017_Test_v2_Data.zip" in message
  assert "--config.data.eval_split=NAME" in message
  # Following the fix as written: the files added, the split is built.
  fx.write_split(isic_train_only.manual_dir,
                 fx.make_split("Test_v2", fx.default_images(10)))
  assert "test" in pipeline.make_builder(isic_train_only).info.splits


def test_missing_masks_hint_names_settable_options(isic_train_only):
  os.remove(os.path.join(isic_train_only.manual_dir,
                         "ISIC-2017_Training_Part1_GroundTruth.zip"))
  with pytest.raises(isic2017.ISICDataError) as info:
    pipeline.make_builder(isic_train_only, require_train_masks=True)
  message = str(info.value)
  assert "require_train_masks" not in message, message
  assert "--config.stages.NAME.lambda_seg=0" in message
  # What lambda_seg=0 everywhere leads to: a build without masks.
  isic_train_only.eval_split = "train"
  pipeline.make_builder(isic_train_only, require_train_masks=False)


def test_a_run_builds_and_fingerprints_its_data_once(isic_train_only,
                                                     tiny_config, tmp_path,
                                                     monkeypatch):
  for folder, first in (("Validation", 200), ("Test_v2", 100)):
    fx.write_split(isic_train_only.manual_dir,
                   fx.make_split(folder, fx.default_images(first)))
  isic_train_only.val_split = "validation"
  tiny_config.data = isic_train_only
  run.setup(copy.deepcopy(tiny_config), str(tmp_path / "first"))  # builds
  calls = []
  for module, name in ((pipeline, "make_builder"),
                       (isic2017, "source_files")):
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, _real=real, _name=name, **k:
                        calls.append(_name) or _real(*a, **k))
  run.setup(copy.deepcopy(tiny_config), str(tmp_path / "second"))
  # Once each: the cached build, checked against the files it was built from.
  assert sorted(calls) == ["make_builder", "source_files"]
  records = []
  for workdir in ("first", "second"):   # a fresh build, then the cached one
    with open(tmp_path / workdir / checks.DATA_SOURCE_FILE) as f:
      records.append(json.load(f))
  assert records[0] == records[1]
  assert records[1]["files"] == isic2017.source_files(
      isic_train_only.manual_dir)


# ----------------------------------------------------------------------------
# Workdirs: never results of one config beside another's config.json.


def _workdir_with_checkpoints(path, config=None):
  os.makedirs(os.path.join(path, "checkpoints", "classification", "2"))
  if config is not None:
    with open(os.path.join(path, "config.json"), "w") as f:
      config = checks.resolve_config(copy.deepcopy(config))
      f.write(config.to_json_best_effort())


def test_checkpoints_without_config_json_stop(tiny_config, tmp_path):
  _workdir_with_checkpoints(tmp_path)
  with pytest.raises(errors.UserError, match="no config.json"):
    checks.check_resumed_config(tiny_config, str(tmp_path))


def test_three_class_saved_config_matches_a_fresh_one(tiny_config, tmp_path):
  tiny_config.data.task = "three_class"
  _workdir_with_checkpoints(tmp_path, tiny_config)
  assert tiny_config.model.num_classes == 2   # the fresh, unresolved config
  checks.check_resumed_config(tiny_config, str(tmp_path))
  tiny_config.data.task = "melanoma"
  with pytest.raises(errors.UserError, match="data.task='three_class'"):
    checks.check_resumed_config(tiny_config, str(tmp_path))


def test_resumed_run_on_other_data_stops(tmp_path):
  source = {"data_set": "isic2017/size16", "version": "1.0.0",
            "splits": {"train": 4},
            "files": {"ISIC-2017_Training_Data.zip": {"size": 10,
                                                       "fingerprint": "a"}}}
  checks.check_data_source(str(tmp_path), source)   # a new run records it
  _workdir_with_checkpoints(tmp_path)
  checks.check_data_source(str(tmp_path), source)   # same data: resumes
  changed = copy.deepcopy(source)
  changed["files"]["ISIC-2017_Training_Data.zip"]["size"] = 12
  with pytest.raises(errors.UserError, match=r"other data \(ISIC-2017_Training_"
                           r"Data.zip 10 -> 12 bytes\)"):
    checks.check_data_source(str(tmp_path), changed)
  (tmp_path / checks.DATA_SOURCE_FILE).write_bytes(b"\xff{")   # damaged
  with pytest.raises(errors.UserError, match=f"{checks.DATA_SOURCE_FILE}: not "
                     "the JSON of the record of a run's data"):
    checks.check_data_source(str(tmp_path), source)


@pytest.mark.slow  # two runs
def test_finished_three_class_run_reruns(tiny_config, tmp_path):
  config = tiny_config   # one short stage: the check is what is tested
  config.data.task = "three_class"
  config.stage_order = ("classification",)
  config.stages.classification.max_steps = 2
  config.rankopt.enabled = False
  config.report.num_cam_images = 1
  first = run.train_and_evaluate(copy.deepcopy(config), str(tmp_path))
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["model"]["num_classes"] == 3
  # The same command again: a no-op resume with the same results.
  assert run.train_and_evaluate(copy.deepcopy(config), str(tmp_path)) == first


# ----------------------------------------------------------------------------
# Command line: one line and a non-zero exit.


def _main(*args, timeout=120):
  return subprocess.run(
      [sys.executable, "-m", "rapool_jax.main", *args],
      cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("text,config_arg,message", [
    ("def get_config(:\n", "{path}", "line 1: SyntaxError"),
    ("X = 1\n", "{path}", "defines no get_config() function"),
    (None, "configs/isic2017.py:nosuch", "unknown variant(s) ['nosuch']"),
    (None, "configs/tiny.py:extra", "get_config() takes 0 positional"),
])
def test_bad_config_files_get_one_line(tmp_path, text, config_arg, message):
  path = tmp_path / "config.py"
  if text is not None:
    path.write_text(text)
  result = _main("--config", config_arg.format(path=path),
                 "--workdir", str(tmp_path / "w"))
  assert result.returncode == 2, result.stderr
  assert result.stderr.count("\n") == 1, result.stderr
  assert message in result.stderr, result.stderr


@pytest.mark.parametrize("override,hint", [
    ("--config.model.dropout_rng=hash",
     "config.model.dropout_rng is now config.systems.dropout_rng"),
    ("--config.stages.joint.plateau_patience=4",
     "config.stages.joint.plateau_patience is now "
     "config.stages.joint.plateau.patience"),
    ("--config.model.max_pool=sliced", "config.model.max_pool was removed"),
])
def test_an_old_override_key_says_where_it_moved(tmp_path, override, hint):
  result = _main("--config", "configs/tiny.py", "--workdir",
                 str(tmp_path / "w"), override)
  assert result.returncode == 2, result.stderr
  assert result.stderr.count("\n") == 1, result.stderr
  assert "unknown config key" in result.stderr and hint in result.stderr


def test_ctrl_c_inside_a_destructor_still_stops_the_run():
  # Python drops a KeyboardInterrupt raised in __del__ or a gc callback (JAX
  # has one) with "Exception ignored": the run must stop all the same.
  code = """if True:
      import os, signal, time
      from rapool_jax import errors
      class Finalised:
        def __del__(self):
          os.kill(os.getpid(), signal.SIGINT)
          time.sleep(2)
      with errors.one_line_errors("interrupted; the same command resumes"):
        Finalised()
        print("went on")
  """
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == errors.INTERRUPTED_EXIT, result
  assert result.stderr == "interrupted; the same command resumes\n"
  assert "went on" not in result.stdout


@pytest.mark.parametrize("error,one_line", [
    (errors.UserError("config.seed='a': not an int"), True),
    (FileNotFoundError(2, "No such file or directory", "labels.csv"), True),
    (errors.DivergedError("[joint] loss is nan at step 4"), True),
    (ValueError("operands could not be broadcast"), False),
    (KeyError("params"), False),
    (AttributeError("'NoneType' object has no attribute 'params'"), False),
])
def test_only_input_errors_are_one_line(capsys, error, one_line):
  with pytest.raises(SystemExit) as info:
    with errors.one_line_errors():
      raise error
  err = capsys.readouterr().err
  if one_line:
    assert info.value.code == 2
    assert err == f"error: {errors.one_line(error)}\n"
  else:
    assert info.value.code == errors.BUG_EXIT
    assert err.startswith("Traceback (most recent call last)"), err
    assert err.splitlines()[-1] == errors.bug_line()


def test_a_diverged_loss_is_one_line(tiny_config, tmp_path, capsys):
  mesh = sharding.make_mesh()
  state = train.TrainState.create(apply_fn=None, params={"w": jnp.ones(2)},
                                  tx=optax.sgd(0.1), batch_stats={})
  state = sharding.put_replicated(state.replace(step=jnp.int32(0)), mesh)
  diverging = lambda state, x: (state, {"loss": state.params["w"][0] / x})  # noqa: E731
  batches = lambda start, stop: ((jnp.float32(0.0),)  # noqa: E731
                                 for _ in range(start, stop))
  with pytest.raises(SystemExit) as info:
    with errors.one_line_errors():
      train.train_stage(state, diverging, batches, name="joint",
                        config=tiny_config, workdir=str(tmp_path), mesh=mesh,
                        finished={})
  assert info.value.code == 2
  assert capsys.readouterr().err == (
      "error: DivergedError: [joint] loss is inf at step 2: lower "
      f"config.stages.joint.lr (now {tiny_config.stages.joint.lr})\n")


@pytest.mark.slow  # a whole tiny run, or a bootstrap by hand: second tier
def test_a_bug_inside_a_stage_keeps_its_traceback(tiny_config, tmp_path,
                                                  monkeypatch, capsys):
  def broken_stage(state, *args, **kwargs):
    return state.variabels  # the kind of slip a change to train.py makes

  monkeypatch.setattr(train, "train_stage", broken_stage)
  with pytest.raises(SystemExit) as info:
    with errors.one_line_errors():
      run.train_and_evaluate(tiny_config, str(tmp_path))
  assert info.value.code == errors.BUG_EXIT
  err = capsys.readouterr().err
  assert "Traceback (most recent call last)" in err
  assert "in run_stage" in err and "in broken_stage" in err, err
  assert "AttributeError: 'TrainState' object has no attribute 'variabels'" in err
  bug = err.splitlines()[-1]
  assert bug.startswith("bug: ") and shlex.join(sys.argv) in bug, bug
  assert str(provenance.git_commit() or "unknown") in bug, bug
  assert "error:" not in err


def test_truncated_zip_for_predict_is_named(tmp_path):
  path = tmp_path / "images.zip"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("ISIC_0000000.jpg", b"x" * 4000)
  path.write_bytes(path.read_bytes()[:2000])
  with pytest.raises(errors.UserError, match=r"images\.zip: truncated or "
                     "corrupt zip"):
    predict.list_images(str(path))


# ----------------------------------------------------------------------------
# A streamed run, interrupted with Ctrl-C, then resumed by the same command.


def test_config_source_reads_the_command_line():
  argv = ["main.py", "--config", "configs/tiny.py:x", "--workdir", "w",
          "--config.seed=3"]
  assert provenance.config_source(argv) == ("configs/tiny.py:x",
                                            ["--config.seed=3"])
  assert provenance.config_source(["pytest"]) == ("", [])


@pytest.fixture(scope="module")
def interrupted_streamed_run(tmp_path_factory, data_dir):
  """``(first, last)`` CompletedProcess-likes of a streamed tiny run stopped
  with SIGINT inside Step 3, then run again by the same command."""
  workdir = str(tmp_path_factory.mktemp("streamed"))
  args = [sys.executable, "-m", "rapool_jax.main", "--config",
          "configs/tiny.py", "--workdir", workdir,
          f"--config.data.data_dir={data_dir}",
          "--config.data.device_memory_budget_mb=0"]
  proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  marker = os.path.join(workdir, "checkpoints", "segmentation", "2")
  deadline = time.time() + 300
  while not os.path.exists(marker):
    assert proc.poll() is None, proc.communicate()
    assert time.time() < deadline, f"no {marker}"
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=120)
  first = (proc.returncode, out, err)
  last = subprocess.run(args, cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  return workdir, first, last


@pytest.mark.slow  # shares a killed and resumed run of the main command
def test_ctrl_c_prints_one_line(interrupted_streamed_run):
  _, (returncode, _, err), _ = interrupted_streamed_run
  assert returncode == errors.INTERRUPTED_EXIT, err
  assert err.strip().splitlines()[-1] == "interrupted; the same command resumes"
  assert "Traceback" not in err, err


@pytest.mark.slow  # shares a killed and resumed run of the main command
def test_streamed_run_resumes_to_the_same_results(interrupted_streamed_run,
                                                  tiny_run):
  workdir, _, last = interrupted_streamed_run
  assert last.returncode == 0, last.stderr
  assert "streamed from host" in last.stdout
  assert "[segmentation] resumed from checkpoint" in last.stdout
  with open(os.path.join(workdir, "results.json")) as f:
    resumed = json.load(f)
  # Streamed and device-resident data train identically (test_train.py).
  with open(os.path.join(tiny_run[0], "results.json")) as f:
    assert resumed == json.load(f)


@pytest.mark.slow  # shares a killed and resumed run of the main command
def test_results_and_run_info_name_their_provenance(interrupted_streamed_run):
  workdir, _, _ = interrupted_streamed_run
  with open(os.path.join(workdir, "results.md")) as f:
    header = f.read()
  assert "Config: `configs/tiny.py`" in header
  assert "`--config.data.device_memory_budget_mb=0`" in header
  assert "Seed: 0" in header
  commit = provenance.git_commit()
  if commit:   # others may commit meanwhile: a commit, not necessarily HEAD
    assert re.search(r"Commit: `[0-9a-f]{40}", header), header
  with open(os.path.join(workdir, "run_info.json")) as f:
    info = json.load(f)
  assert "--config.data.device_memory_budget_mb=0" in info["command"]
  assert (info["commit"] is None) == (commit is None)
  assert info["packages"]["jax"] and info["packages"]["flax"]
  assert len(info["runs"]) == 1   # the interrupted invocation wrote none
  with open(os.path.join(workdir, checks.DATA_SOURCE_FILE)) as f:
    assert json.load(f)["data_set"].startswith("synthetic_derm/")


def _split(n, with_masks):
  return pipeline.Split(
      images=np.zeros((n, 8, 8, 3), np.uint8), masks=np.zeros((n, 8, 8),
                                                               np.uint8),
      labels=np.arange(n) % 2, has_mask=np.arange(n) < with_masks,
      ids=np.array([f"i{k}" for k in range(n)]))


def test_the_oracle_needs_every_mask_of_the_splits_it_is_scored_on(
    tiny_config):
  tiny_config.stages.joint.pooling = "mask_oracle"
  data = tiny_config.data
  splits = {data.train_split: _split(6, 6), data.val_split: _split(4, 4),
            data.eval_split: _split(4, 3), "extra": _split(4, 0)}
  with pytest.raises(errors.UserError, match=(
      "config.stages.joint.pooling='mask_oracle' reads the true mask, but 1 "
      f"images of config.data.eval_split='{data.eval_split}' have none")):
    checks.check_masks_for_pooling(tiny_config, splits)
  splits[data.eval_split] = _split(4, 4)
  checks.check_masks_for_pooling(tiny_config, splits)  # "extra" has none
  tiny_config.stages.joint.pooling = "region"
  splits[data.eval_split] = _split(4, 0)
  checks.check_masks_for_pooling(tiny_config, splits)


def test_an_oracle_writes_no_scores_for_images_without_masks(tiny_config,
                                                             tmp_path, capsys):
  """Pooled over an empty mask every image would get one constant score."""
  data = tiny_config.data
  data.report_splits = ("extra",)
  splits = {data.val_split: _split(4, 4), data.eval_split: _split(4, 4),
            "extra": _split(4, 0)}
  predict_fn = lambda variables, split, pooling: {  # noqa: E731
      "probs": np.tile([[0.3, 0.7]], (len(split), 1)),
      "seg_pred": np.zeros((len(split), 8, 8), np.float32)}
  data.crop_size = 8
  row = evaluate.evaluate_network(predict_fn, splits, data, str(tmp_path),
                                  "oracle", None, "mask_oracle")
  assert row["model"] == "oracle"
  written = sorted(os.listdir(tmp_path / "predictions"))
  assert written == sorted({data.val_split, data.eval_split})
  assert ("oracle: 4 of the 4 images of split 'extra' have no mask"
          in capsys.readouterr().out)
