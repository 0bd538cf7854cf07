"""The pipeline: freezing, one whole tiny run, config errors."""

import copy
import json
import os
import re
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rapool_jax import checkpoint as ckpt_lib
from rapool_jax import checks
from rapool_jax import config_lib
from rapool_jax import errors
from rapool_jax import evaluate
from rapool_jax import optim
from rapool_jax import run
from rapool_jax import sharding
from rapool_jax import train


def _setup(config, workdir):
  """The run's shared pieces and its Step-1 variables."""
  job = run.setup(config, str(workdir))
  return job, train.init_variables(job.model, job.key, config.data.crop_size,
                                   config.model)


def _run_stage(job, config, workdir, index, variables):
  return run.run_stage(job, config, str(workdir), index, variables, {})


def _leaves_with_paths(tree):
  return {optim.path_str(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_frozen_stage_keeps_frozen_params_and_batch_stats(tiny_config, tmp_path):
  job, before = _setup(tiny_config, tmp_path)
  before_leaves = {k: _leaves_with_paths(before[k]) for k in before}
  # Copies: the train step donates its input state.
  after, meta = _run_stage(job, tiny_config, tmp_path, 1,
                           jax.tree.map(jnp.array, before))
  assert meta["done"] and meta["step"] == tiny_config.stages.segmentation.max_steps
  params = _leaves_with_paths(after["params"])
  for name, value in params.items():
    if name.startswith("seg_conv/"):
      assert not np.array_equal(value, before_leaves["params"][name]), name
    else:
      np.testing.assert_array_equal(value, before_leaves["params"][name],
                                    err_msg=name)
  for name, value in _leaves_with_paths(after["batch_stats"]).items():
    np.testing.assert_array_equal(value, before_leaves["batch_stats"][name],
                                  err_msg=name)


def test_unfrozen_stage_moves_backbone_and_batch_stats(tiny_config, tmp_path):
  job, before = _setup(tiny_config, tmp_path)
  stats0 = _leaves_with_paths(before["batch_stats"])
  conv0 = np.asarray(before["params"]["backbone"]["conv1"]["kernel"])
  after, _ = _run_stage(job, tiny_config, tmp_path, 0,
                        jax.tree.map(jnp.array, before))
  assert not np.array_equal(after["params"]["backbone"]["conv1"]["kernel"], conv0)
  stats1 = _leaves_with_paths(after["batch_stats"])
  assert any(not np.array_equal(stats1[k], stats0[k]) for k in stats0)


def test_every_parameter_must_be_covered_by_a_rule():
  params = {"backbone": {"conv1": {"kernel": jnp.zeros(2)}},
            "seg_conv": {"kernel": jnp.zeros(2)}}
  with pytest.raises(errors.UserError, match="backbone/conv1/kernel"):
    optim.label_params(params, [("seg_conv/.*", "train")])
  labels = optim.label_params(params, [("seg_conv/.*", "train"), (".*", "freeze")])
  assert labels == {"backbone": {"conv1": {"kernel": "freeze"}},
                    "seg_conv": {"kernel": "train"}}


def test_frozen_leaves_carry_no_optimizer_state(tiny_config):
  params = {"backbone": {"w": jnp.ones((100,))}, "seg_conv": {"w": jnp.ones((3,))}}
  tx = optim.make_optimizer(tiny_config.optimizer,
                            tiny_config.stages.segmentation, params)
  state_sizes = sum(np.size(x) for x in jax.tree.leaves(tx.init(params)))
  assert state_sizes < 100  # momentum only for the 3 seg_conv weights (+ counts)


def test_coupled_weight_decay_matches_torch_sgd_formula(tiny_config):
  stage = tiny_config.stages.classification
  stage.trainable = (("(.*)", "train"),)
  params = {"w": jnp.asarray([1.0, -2.0])}
  tx = optim.make_optimizer(tiny_config.optimizer, stage, params)
  state = tx.init(params)
  g = {"w": jnp.asarray([0.5, 0.25])}
  updates, state = tx.update(g, state, params)
  wd, lr = tiny_config.optimizer.weight_decay, stage.lr
  np.testing.assert_allclose(updates["w"], -lr * (g["w"] + wd * params["w"]),
                             rtol=1e-6)


def test_whole_pipeline_tiny(tiny_config, tiny_run):
  workdir, results = tiny_run
  names = [r["model"] for r in results["rows"]]
  assert names == ["Step 2: GAP", "Step 4: region pooling", "Step 4 + RankOpt"]
  for row in results["rows"]:
    for key in ("sensitivity", "specificity", "accuracy", "auc", "jaccard"):
      assert 0.0 <= row[key] <= 1.0, (row["model"], key)
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["rows"][2]["model"] == "Step 4 + RankOpt"
  table = open(os.path.join(workdir, "results.md")).read()
  assert "| Step 4 + RankOpt |" in table
  for fig in ("roc.png", "cam.png"):
    path = os.path.join(workdir, "figures", fig)
    assert os.path.getsize(path) > 10_000, fig
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert os.path.exists(os.path.join(workdir, "rankopt.npz"))
  # Running again is a no-op resume with identical results.
  again = run.train_and_evaluate(tiny_config, workdir)
  assert again == results


def test_tensorboard_shows_lr_and_validation_per_stage(tiny_config, tiny_run):
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(
      os.path.join(tiny_run[0], "tensorboard"), size_guidance={"scalars": 0})
  events.Reload()
  tags = set(events.Tags()["scalars"])
  for name in tiny_config.stage_order:
    for tag in ("train/lr", "train/loss", "val/val_auc", "val/val_jaccard",
                "val/val_loss"):
      assert f"{name}/{tag}" in tags, (name, tag, sorted(tags))
    # eval_every is longer than the tiny stages: each evaluates at its end.
    auc = events.Scalars(f"{name}/val/val_auc")
    assert [e.step for e in auc] == [tiny_config.stages[name].max_steps]
    assert 0 <= auc[0].value <= 1
    assert events.Scalars(f"{name}/val/val_loss")[0].value > 0
  # Segmentation: lr 0.05, divided by 10 every 2 steps, logged at steps 2
  # and 3; step t (from 1) ran at the rate of count t - 1.
  lr = [(e.step, e.value) for e in events.Scalars("segmentation/train/lr")]
  assert [s for s, _ in lr] == [2, 3]
  np.testing.assert_allclose([v for _, v in lr], [0.05, 0.005], rtol=1e-6)


class _Writer:
  def __init__(self):
    self.rows = []

  def scalars(self, prefix, step, values):
    self.rows.append((prefix, step, dict(values)))


def test_validation_every_eval_every_steps_and_for_the_plateau_rule(
    tiny_config):
  stage = tiny_config.stages.joint
  stage.max_steps = 7
  stage.plateau.update(metric="val_loss", eval_every=2, patience=2)
  losses = iter([0.4, 0.3, 0.45, 0.5, 0.6])
  validate = lambda _: {"val_auc": 0.6, "val_loss": next(losses),  # noqa: E731
                        "val_jaccard": float("nan")}
  writer, meta = _Writer(), {"plateau": {"best": None, "bad": 0,
                                         "history": []}}
  state = types.SimpleNamespace(variables={})
  stops = [train._validated("joint", stage, 3, state, meta, step, validate,
                            writer) for step in range(1, 8)]
  # One evaluation at step 6 serves both the interval and the rule.
  assert [s for _, s, _ in writer.rows] == [2, 3, 4, 6, 7]
  # A NaN (no masks) is left out.
  assert writer.rows[0] == ("joint/val", 2, {"val_auc": 0.6, "val_loss": 0.4})
  # The rule reads -loss at its steps 2, 4, 6 only (step 3's lower loss is
  # not its); two evaluations without a gain stop it.
  assert meta["plateau"]["history"] == [[2, -0.4], [4, -0.45], [6, -0.5]]
  assert stops == [False] * 5 + [True, False]


# What the default config gives (README's table), per XLA:CPU build: the
# same code gives 0.543 / 0.612 / 0.624 on an Intel Xeon and 0.545 / 0.669 /
# 0.671 on an AMD EPYC (floating-point paths differ by instruction set), and
# three seeds spread by about 0.01. The shortcut (a colour disc that marks
# benign lesions in training and melanomas in test) takes GAP to chance,
# while pooling over the lesion ignores it.
DEFAULT_AUC = {"Step 2: GAP": (0.50, 0.60), "Step 4: region pooling": (0.59, 0.72),
               "Step 4 + RankOpt": (0.59, 0.72)}


@pytest.mark.slow  # the default job: about 150 s on 2 quiet cores
def test_default_config_gives_the_readme_table(data_dir, tmp_path):
  from conftest import load_config
  config = load_config("default")
  config.data.data_dir = data_dir
  results = run.train_and_evaluate(config, str(tmp_path))
  rows = {r["model"]: r for r in results["rows"]}
  for name, (low, high) in DEFAULT_AUC.items():
    assert low <= rows[name]["auc"] <= high, (name, rows[name]["auc"])
  # Region pooling beats GAP by more than seeds and CPUs move either.
  assert (rows["Step 4: region pooling"]["auc"]
          - rows["Step 2: GAP"]["auc"]) >= 0.05
  # Step 3 learns the lesion: JA from chance (~0.2) to about 0.9.
  assert rows["Step 2: GAP"]["jaccard"] < 0.3
  assert rows["Step 4: region pooling"]["jaccard"] > 0.85
  assert results["num_eval_examples"] == 600


def _saved_run(config, workdir):
  """A workdir as a run of ``config`` leaves it once it has checkpointed."""
  os.makedirs(os.path.join(workdir, "checkpoints", "classification", "2"))
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))


def test_resuming_with_another_config_names_what_changed(tiny_config,
                                                         tmp_path):
  workdir = str(tmp_path)
  _saved_run(tiny_config, workdir)
  checks.check_resumed_config(tiny_config, workdir)   # the same: resumes
  resumed = copy.deepcopy(tiny_config)
  resumed.systems.dropout_rng = "hash"
  resumed.stages.joint.lambda_seg = 5.0
  # Paths, logging, checkpointing and layout may change on resume.
  resumed.data.data_dir = "/elsewhere"
  resumed.train.log_every = 1
  resumed.systems.state_layout = "default"
  with pytest.raises(errors.UserError) as error:
    checks.check_resumed_config(resumed, workdir)
  message = str(error.value)
  assert "systems.dropout_rng='threefry' (now 'hash')" in message
  assert "stages.joint.lambda_seg=" in message
  for allowed in ("data_dir", "log_every", "state_layout"):
    assert allowed not in message
  # Never the hint to delete config.json: that relabels the results.
  assert "delete" not in message and "new --workdir" in message
  # Before any checkpoint there is nothing to resume: any config starts.
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  checks.check_resumed_config(resumed, workdir)


def test_resume_ignores_keys_added_since_the_run_was_saved(tiny_config,
                                                           tmp_path):
  old = copy.deepcopy(tiny_config)
  del old["systems"]   # saved before the block existed (threefry masks)
  _saved_run(old, str(tmp_path))
  checks.check_resumed_config(tiny_config, str(tmp_path))


def test_configs_saved_before_the_systems_block_resume_by_todays_names(
    tiny_config, tmp_path):
  old = copy.deepcopy(tiny_config)
  systems = old.systems
  del old["systems"]
  # Where these keys were, and the layers since removed (same values).
  old.model.dropout_rng, old.model.dropout_bits = "hash", 32
  old.model.batch_norm_impl, old.model.max_pool = "fused", "slices"
  old.train.prng_impl = systems.prng_impl
  old.train.state_layout = "default"
  old.compilation_cache_dir = "/cache"
  _saved_run(old, str(tmp_path))
  with pytest.raises(errors.UserError) as error:
    checks.check_resumed_config(tiny_config, str(tmp_path))
  # One difference: the masks (prng_impl agrees; the rest may change).
  assert str(error.value).count("(now ") == 1
  assert "systems.dropout_rng='hash' (now 'threefry')" in str(error.value)
  tiny_config.systems.dropout_rng = "hash"
  checks.check_resumed_config(tiny_config, str(tmp_path))


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_unreadable_saved_config_is_named(tiny_config, tmp_path, text):
  _saved_run(tiny_config, str(tmp_path))
  (tmp_path / "config.json").write_text(text)
  with pytest.raises(errors.UserError, match=r"config\.json: not the JSON"):
    checks.check_resumed_config(tiny_config, str(tmp_path))


def test_unknown_stage_in_order_is_clear(tiny_config, tmp_path):
  tiny_config.stage_order = ("classification", "joint_typo")
  with pytest.raises(errors.UserError, match="joint_typo"):
    run.train_and_evaluate(tiny_config, str(tmp_path))


@pytest.mark.parametrize("key,value,message", [
    ("stages.joint.pooling", "regoin", "config.stages.joint.pooling='regoin'"),
    ("stages.joint.schedule", "linear", "config.stages.joint.schedule='linear'"),
    ("stages.joint.plateau.metric", "val_acc",
     "config.stages.joint.plateau.metric='val_acc'"),
    ("stages.joint.plateau.patience", 0,
     "config.stages.joint.plateau.patience=0"),
    ("stages.joint.max_steps", -1, "config.stages.joint.max_steps=-1"),
    ("train.batch_size", 0, "config.train.batch_size=0"),
    ("train.checkpoint_every", 0, "config.train.checkpoint_every=0"),
    ("systems.state_layout", "ohwi", "config.systems.state_layout='ohwi'"),
])
def test_bad_stage_or_train_value_fails_before_any_training(
    tiny_config, tmp_path, capsys, key, value, message):
  # A value the last stage would trip on must not cost the earlier stages.
  section, *rest = key.split(".")
  node = tiny_config[section]
  for part in rest[:-1]:
    node = node[part]
  node[rest[-1]] = value
  with pytest.raises(errors.UserError, match=re.escape(message)):
    run.train_and_evaluate(tiny_config, str(tmp_path))
  assert "step" not in capsys.readouterr().out
  assert not os.path.exists(tmp_path / "checkpoints")


def test_a_stage_key_set_in_a_config_file_must_exist(tiny_config, tmp_path):
  # ConfigDict accepts new attributes: an old flat plateau key would be
  # silently ignored, and the stage would run without early stopping.
  tiny_config.stages.segmentation.plateau_metric = "val_jaccard"
  with pytest.raises(errors.UserError, match=re.escape(
      "config.stages.segmentation.plateau_metric is not a stage setting; "
      "config.stages.segmentation.plateau_metric is now "
      "config.stages.segmentation.plateau.metric")):
    run.validate_config(tiny_config)
  del tiny_config.stages.segmentation["plateau_metric"]
  tiny_config.stages.segmentation.lamda_seg = 2.0
  with pytest.raises(errors.UserError, match="lamda_seg is not a stage setting; "
                           "choose from"):
    run.validate_config(tiny_config)


def test_plateau_metric_needs_a_validation_split(tiny_config, tmp_path):
  tiny_config.stages.joint.plateau.metric = "val_auc"
  tiny_config.data.val_split = ""
  with pytest.raises(errors.UserError, match="config.data.val_split"):
    run.validate_config(tiny_config)


def test_plateau_update_counts_evaluations_since_the_best():
  tracker = {"best": None, "bad": 0, "history": []}
  bad = [train.plateau_update(tracker, step, value, min_delta=0.01)
         for step, value in [(1, 0.5), (2, 0.505), (3, 0.52), (4, 0.4),
                             (5, 0.525)]]
  # 0.505 is within min_delta of 0.5; 0.525 within it of 0.52.
  assert bad == [0, 1, 0, 1, 2]
  assert tracker["best"] == 0.52
  assert tracker["history"][-1] == [5, 0.525]


def test_saved_configs_with_flat_plateau_keys_compare_with_todays():
  saved = {"stages.segmentation.plateau_metric": "val_jaccard",
           "stages.segmentation.plateau_eval_every": 500,
           "model.dropout_rng": "threefry", "model.max_pool": "reduce_window",
           "seed": 0}
  assert config_lib.upgrade_flat(saved) == {
      "stages.segmentation.plateau.metric": "val_jaccard",
      "stages.segmentation.plateau.eval_every": 500,
      "systems.dropout_rng": "threefry", "seed": 0}


@pytest.mark.parametrize("metric", [  # one in the quick tier
    m if m == "val_loss" else pytest.param(m, marks=pytest.mark.slow)
    for m in train.PLATEAU_METRICS])
def test_plateau_rule_stops_a_stage_that_stops_improving(tiny_config, tmp_path,
                                                         metric):
  stage = tiny_config.stages.segmentation
  stage.max_steps = 6
  stage.plateau = dict(metric=metric, eval_every=1, patience=2,
                       min_delta=1e9)  # after the first evaluation nothing is better
  job, init = _setup(tiny_config, tmp_path)
  _, meta = _run_stage(job, tiny_config, tmp_path, 1, init)
  # The first evaluation sets the best; two without improvement end the stage.
  assert meta["done"] and meta["step"] == 3
  steps, values = zip(*meta["plateau"]["history"])
  assert steps == (1, 2, 3)
  # val_loss is tracked negated, so that larger is better for every metric.
  low, high = (-np.inf, 0.0) if metric == "val_loss" else (0.0, 1.0)
  assert all(low <= v <= high for v in values), values


@pytest.mark.slow  # whole or repeated runs
def test_streamed_and_device_resident_data_train_identically(tiny_config,
                                                             tmp_path):
  finals = []
  for budget in (1024, 0):  # MiB: resident, then streamed through grain
    tiny_config.data.device_memory_budget_mb = budget
    job, init = _setup(tiny_config, tmp_path / f"b{budget}")
    assert (job.train_dev is not None) == (budget > 0)
    variables, _ = _run_stage(job, tiny_config, tmp_path / f"b{budget}", 0,
                              init)
    finals.append(_leaves_with_paths(variables))
  for name in finals[0]:
    np.testing.assert_allclose(finals[0][name], finals[1][name], rtol=1e-5,
                               atol=1e-6, err_msg=name)


@pytest.mark.slow  # whole or repeated runs
def test_pretrained_init_then_frozen_step_and_resume(tiny_config, tmp_path):
  from conftest import REPO
  from rapool_jax import weight_files
  from rapool_jax.models.resnet import load, resnet
  weights = str(REPO / "tests" / "fixtures" / "resnet50_w8_torchvision.safetensors")
  tiny_config.model.depth, tiny_config.model.width = "50", 0.125
  tiny_config.model.output_stride = 32
  tiny_config.model.pretrained = weights
  tiny_config.stages.segmentation.max_steps = 2
  job, variables = _setup(tiny_config, tmp_path)
  trunk = jax.eval_shape(lambda: resnet(50, width=0.125).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  loaded = load(trunk, weight_files.read(weights), weights)
  for collection in ("params", "batch_stats"):
    got = _leaves_with_paths(variables[collection]["backbone"])
    for name, value in _leaves_with_paths(loaded[collection]).items():
      np.testing.assert_array_equal(got[name], value, err_msg=name)
  after, meta = _run_stage(job, tiny_config, tmp_path, 1,
                           jax.tree.map(jnp.array, variables))
  assert meta["done"]
  for collection in ("params", "batch_stats"):
    got = _leaves_with_paths(after[collection]["backbone"])
    for name, value in _leaves_with_paths(loaded[collection]).items():
      np.testing.assert_array_equal(got[name], value, err_msg=name)
  # A second call finds the finished stage and returns it unchanged.
  again, meta2 = _run_stage(job, tiny_config, tmp_path, 1, variables)
  assert meta2["done"]
  np.testing.assert_array_equal(again["params"]["seg_conv"]["kernel"],
                                after["params"]["seg_conv"]["kernel"])


@pytest.mark.slow  # whole or repeated runs
def test_prng_impl_switches_the_random_stream(tiny_config, tmp_path):
  finals = {}
  for impl in ("threefry2x32", "rbg"):
    tiny_config.systems.prng_impl = impl
    job, init = _setup(tiny_config, tmp_path / impl)
    variables, meta = _run_stage(job, tiny_config, tmp_path / impl, 0, init)
    assert meta["done"]
    finals[impl] = np.asarray(
        variables["params"]["backbone"]["conv1"]["kernel"])
    assert np.all(np.isfinite(finals[impl]))
  # Other bits for init, augmentation and dropout: another run, not a no-op.
  assert not np.array_equal(finals["threefry2x32"], finals["rbg"])
  tiny_config.systems.prng_impl = "philox"
  with pytest.raises(errors.UserError, match="systems.prng_impl='philox'"):
    run.validate_config(tiny_config)


@pytest.mark.slow  # whole or repeated runs
def test_mask_oracle_pools_the_true_mask_through_the_whole_pipeline(
    tiny_config, tmp_path):
  # Step 4 pooled with the ground-truth mask: training, RankOpt and the CAM
  # figure all need the mask passed through.
  tiny_config.stages.joint.pooling = "mask_oracle"
  tiny_config.stages.joint.report_as = "Step 4: mask_oracle"
  results = run.train_and_evaluate(tiny_config, str(tmp_path))
  assert [r["model"] for r in results["rows"]][1] == "Step 4: mask_oracle"
  assert os.path.getsize(tmp_path / "figures" / "cam.png") > 10_000
  # The trained network's pooled features are Eq. 1 over the true mask,
  # box-averaged to the feature grid (numpy, independent of pooling.py).
  job, init = _setup(tiny_config, tmp_path)
  variables = ckpt_lib.restore_variables(str(tmp_path), "joint", init)
  split = job.splits[tiny_config.data.eval_split]
  images, masks = split.images[:8], split.masks[:8]
  out = job.model.apply(
      variables, jnp.asarray(images, jnp.float32) / 255.0, train=False,
      pooling="mask_oracle", mask=jnp.asarray(masks))
  f = np.asarray(out["features"], np.float64)
  b, h, w, _ = f.shape
  size = masks.shape[1]
  weights = masks.astype(np.float64).reshape(
      b, h, size // h, w, size // w).mean(axis=(2, 4))
  expected = (f * weights[..., None]).sum(axis=(1, 2)) / (h * w)
  np.testing.assert_allclose(out["pooled"], expected, rtol=1e-4, atol=1e-6)
  assert not np.allclose(out["pooled"], f.mean(axis=(1, 2)), atol=1e-3)


@pytest.mark.slow  # whole or repeated runs
def test_state_in_gpu_layouts_trains_saves_and_evaluates_as_row_major(
    tiny_config, tmp_path, monkeypatch):
  """XLA:CPU keeps row-major state under ``state_layout="auto"``; XLA:GPU
  picks OHWI conv kernels. Forcing that layout here runs the GPU's path:
  placing the state, the donated step, checkpoints, evaluation."""
  from jax.experimental.layout import Format
  from jax.experimental.layout import Layout
  ohwi = Layout(major_to_minor=(3, 0, 1, 2))
  row_major = sharding.state_formats

  def gpu_like(state, state_sharding, layout):
    if layout == "default":
      return row_major(state, state_sharding, layout)
    return jax.tree.map(
        lambda a: Format(ohwi, state_sharding) if a.ndim == 4 else state_sharding,
        state)

  tiny_config.train.checkpoint_every = 1
  runs = {}
  for layout in ("default", "auto"):
    if layout == "auto":
      monkeypatch.setattr(sharding, "state_formats", gpu_like)
    tiny_config.systems.state_layout = layout
    workdir = str(tmp_path / layout)
    job, init = _setup(tiny_config, workdir)
    variables, _ = _run_stage(job, tiny_config, workdir, 0, init)
    kernel = variables["params"]["backbone"]["conv1"]["kernel"]
    assert kernel.format.layout.major_to_minor == (
        (3, 0, 1, 2) if layout == "auto" else (0, 1, 2, 3))
    restored = ckpt_lib.restore_variables(workdir, "classification", init)
    val = job.splits[tiny_config.data.val_split]
    runs[layout] = (_leaves_with_paths(variables), _leaves_with_paths(restored),
                    job.predict(variables, val, "gap")["probs"])
  (default, default_saved, default_probs) = runs["default"]
  (auto, auto_saved, auto_probs) = runs["auto"]
  for name in default:
    np.testing.assert_allclose(auto[name], default[name], rtol=1e-6,
                               atol=1e-7, err_msg=name)
    np.testing.assert_array_equal(auto_saved[name], auto[name], err_msg=name)
    np.testing.assert_array_equal(default_saved[name], default[name],
                                  err_msg=name)
  np.testing.assert_allclose(auto_probs, default_probs, rtol=1e-5, atol=1e-6)
