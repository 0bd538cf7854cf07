"""Populations: P runs as one compiled program reproduce the P single runs."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rapool_jax import checkpoint as ckpt_lib
from rapool_jax import errors
from rapool_jax import population
from rapool_jax import predict
from rapool_jax import run
from rapool_jax import run_population
from rapool_jax import train
from rapool_jax.data import folds
from rapool_jax.data import pipeline

Member = population.Member

# Seeds, folds and numeric settings all differ (member 1 its lr, member 2 its
# lambda_seg); the joint stage has region pooling, dropout and BatchNorm.
MEMBERS = (Member(0, 0), Member(1, 1, {"joint": {"lr": 0.02}}),
           Member(2, 0, {"joint": {"lambda_seg": 2.0}}))
JOINT = 2  # the joint stage's batch order in the tiny config


def _cv_config(config):
  """The tiny config on 3-fold cross-validation, scored on the test split."""
  config.data.crossval.num_folds = 3
  config.data.train_split, config.data.val_split = "cv_train", "cv_val"
  config.data.eval_split = "test"
  config.rankopt.threshold_split = "cv_val"
  config.train.checkpoint_every = 100
  return config


def _fake_split(n=30, seed=0):
  rng = np.random.default_rng(seed)
  return pipeline.Split(
      images=np.zeros((n, 4, 4, 3), np.uint8), masks=np.zeros((n, 4, 4),
                                                              np.uint8),
      labels=(rng.random(n) < 0.3).astype(np.int32),
      has_mask=np.ones(n, bool), ids=np.array([f"id{i:03d}" for i in range(n)]))


def test_member_rows_and_batches_are_the_single_runs(tiny_config):
  config = _cv_config(tiny_config)
  pooled = _fake_split()
  members = [Member(5, f) for f in range(3)]
  rows = [population.member_rows(
      pooled, population.member_config(config, m).data) for m in members]
  for m, r in zip(members, rows):
    cv = population.member_config(config, m).data.crossval
    single = folds.crossval_splits(pooled, cv)["cv_train"]
    np.testing.assert_array_equal(pooled.ids[r], single.ids)
  batches = population.batch_indices(members, rows, JOINT, 7, 8)
  assert batches.shape == (3, 8)
  for p, m in enumerate(members):
    single = folds.crossval_splits(
        pooled, population.member_config(config, m).data.crossval)["cv_train"]
    want = single.ids[pipeline.batch_indices(5, JOINT, 7, 8, len(single))]
    np.testing.assert_array_equal(pooled.ids[batches[p]], want)


@pytest.mark.parametrize("form", population.FORMS)
def test_every_form_maps_a_step_over_members(form):
  def step(carry, idx, settings, split):  # SGD on a conv, data shared
    def loss(w):
      x = split["x"][idx]
      y = jax.lax.conv_general_dilated(
          x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return jnp.mean(y ** 2) * settings["scale"]
    g = jax.grad(loss)(carry["w"])
    return {"w": carry["w"] - 0.1 * g}, {"loss": loss(carry["w"])}

  rng = np.random.default_rng(0)
  split = {"x": jnp.asarray(rng.normal(size=(10, 6, 6, 2)), jnp.float32)}
  carry = {"w": jnp.asarray(rng.normal(size=(3, 3, 3, 2, 4)), jnp.float32)}
  idx = jnp.asarray(rng.integers(0, 10, (3, 4)), jnp.int32)
  settings = {"scale": jnp.asarray([1.0, 2.0, 0.5])}
  out, scalars = jax.jit(population.over_members(step, form))(
      carry, idx, settings, split)
  for p in range(3):
    want, want_scalars = step(*population.member((carry, idx, settings), p),
                              split)
    np.testing.assert_allclose(out["w"][p], want["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scalars["loss"][p], want_scalars["loss"],
                               rtol=1e-5)


def test_stack_and_member_round_trip():
  trees = [{"a": jnp.full((2,), i), "b": {"c": jnp.float32(i)}}
           for i in range(3)]
  stacked = population.stack(trees)
  assert jax.tree.leaves(stacked)[0].shape[0] == 3
  for i, t in enumerate(trees):
    got = population.member(stacked, i)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool((x == y).all()), got, t))


def test_member_config_is_the_single_runs(tiny_config):
  config = _cv_config(tiny_config)
  c = population.member_config(config, MEMBERS[1])
  assert (c.seed, c.data.crossval.fold, c.stages.joint.lr) == (1, 1, 0.02)
  assert config.seed == 0 and config.stages.joint.lr == 0.05  # not changed
  settings = population.stage_settings(config, MEMBERS, "joint")
  np.testing.assert_allclose(settings["lr"], [0.05, 0.02, 0.05])
  np.testing.assert_allclose(settings["lambda_seg"], [7.5, 7.5, 2.0])


@pytest.mark.parametrize("member, message", [
    (Member(0, stages={"joint": {"pooling": "gap"}}),
     "stages.joint.pooling='gap': members differ only in lr"),
    (Member(0, stages={"nosuch": {"lr": 0.1}}), "stages.nosuch: not a stage"),
    (Member(0, fold=3), "fold=3 is not a fold of"),
    (Member(1), "is member 0 again"),   # the same run, trained twice
])
def test_bad_members_are_named_in_one_line(tiny_config, member, message):
  config = _cv_config(tiny_config)
  with pytest.raises(errors.UserError, match=message) as e:
    population.check_members(config, [Member(1), member])
  assert "member 1" in str(e.value) and "\n" not in str(e.value)


def test_a_plateau_rule_is_refused(tiny_config):
  tiny_config.stages.joint.plateau.metric = "val_auc"
  with pytest.raises(errors.UserError,
                     match="config.stages.joint.plateau.metric='val_auc'"):
    population.check_members(tiny_config, [Member(0)])


def test_unknown_form_is_named():
  with pytest.raises(errors.UserError, match="member_axis='loop'"):
    population.over_members(lambda *args: args, "loop")


def test_a_workdir_resumes_only_its_own_population(tmp_path):
  population.check_manifest(str(tmp_path), MEMBERS)
  with open(tmp_path / population.MANIFEST) as f:
    assert json.load(f)["members"][1] == {
        "seed": 1, "fold": 1, "stages": {"joint": {"lr": 0.02}}}
  population.check_manifest(str(tmp_path), MEMBERS)  # the same: fine
  with pytest.raises(errors.UserError,
                     match=r"members.json: .* member 2 .*use a new workdir"):
    population.check_manifest(str(tmp_path), MEMBERS[:2] + (Member(7),))


# ----------------------------------------------------------------------------
# Against single runs (each compiles a train step: the slow tier).


def _training_data(config, members):
  """The split the members train on and each one's rows of it."""
  return run_population.load_data(config, members)[2]


def _single_scores(config, member, workdir):
  """Per-image test scores of the single run ``member`` stands for: the
  training job's own setup, Step 1 and joint stage."""
  config = population.member_config(config, member)
  job = run.setup(config, workdir)
  init = train.init_variables(job.model, job.key, config.data.crop_size,
                              config.model)
  variables, _ = run.run_stage(job, config, workdir, JOINT, init, {})
  return job, job.predict(variables, job.splits["test"],
                          "region")["probs"][:, 1]


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory, data_dir):
  import conftest  # pylint: disable=g-import-not-at-top
  config = conftest.load_config("tiny")
  config.data.data_dir = data_dir
  config = _cv_config(config)
  out = [_single_scores(config, m, str(tmp_path_factory.mktemp(f"single{i}")))
         for i, m in enumerate(MEMBERS)]
  job = out[0][0]
  return config, (job.predict, job.splits["test"]), [s for _, s in out]


@pytest.mark.slow  # three single runs and a population
@pytest.mark.parametrize("form", population.FORMS)
def test_population_of_three_reproduces_the_single_runs(single_runs, form,
                                                        tmp_path):
  config, (predict_fn, test_split), want = single_runs
  pop = population.Population(config.copy_and_resolve_references(), MEMBERS,
                              _training_data(config, MEMBERS), form=form)
  stacked, meta = pop.run_stage(str(tmp_path), JOINT, "joint",
                                pop.init_variables())
  assert meta["done"] and meta["step"] == config.stages.joint.max_steps
  for p in range(len(MEMBERS)):
    variables = population.member(stacked, p)
    scores = predict_fn(variables, test_split, "region")["probs"][:, 1]
    np.testing.assert_allclose(scores, want[p], atol=1e-4, rtol=0)


@pytest.mark.slow  # a single run and a population
def test_population_of_one_is_the_plain_run(tiny_config, tmp_path):
  config = tiny_config.copy_and_resolve_references()
  os.makedirs(tmp_path / "single")
  job = run.setup(config, str(tmp_path / "single"))
  init = train.init_variables(job.model, job.key, config.data.crop_size,
                              config.model)
  want, _ = run.run_stage(job, config, str(tmp_path / "single"), 0, init, {})
  members = [Member(tiny_config.seed)]
  pop = population.Population(tiny_config, members,
                              _training_data(tiny_config, members))
  stacked = pop.init_variables()
  assert jax.tree.all(jax.tree.map(
      lambda a, b: bool((a[0] == b).all()), stacked, init))
  got, _ = pop.run_stage(str(tmp_path / "pop"), 0, "classification", stacked)
  got = population.member(got, 0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), got,
               want)


@pytest.mark.slow  # two populations
def test_killed_population_resumes_identically_and_writes_out_members(
    tiny_config, tmp_path, capsys):
  config = _cv_config(tiny_config)
  config.train.checkpoint_every, config.train.keep_checkpoints = 2, 5
  members, workdir = MEMBERS[1:], str(tmp_path / "pop")

  def run_population():
    pop = population.Population(config.copy_and_resolve_references(),
                                members, _training_data(config, members))
    return pop, pop.run_stage(workdir, JOINT, "joint", pop.init_variables())

  _, (whole, _) = run_population()
  # What a kill right after step 2's checkpoint leaves (as test_resume.py).
  stage_dir = ckpt_lib.stage_dir(workdir, "joint")
  for name in os.listdir(stage_dir):
    if not (name.isdigit() and int(name) <= 2):
      shutil.rmtree(os.path.join(stage_dir, name))
  pop, (resumed, meta) = run_population()
  assert "[joint] resumed from checkpoint at step 2" in capsys.readouterr().out
  assert meta["done"]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed),
               jax.device_get(whole))

  # Any member, written out, is an ordinary run's workdir.
  out = str(tmp_path / "member1")
  pop.write_member(workdir, "joint", resumed, 1, out)
  saved, _, variables, pooling, _ = predict.load_run(out, "joint",
                                                     use_rankopt=False)
  assert (saved.seed, pooling, saved.stages.joint.lambda_seg) == (
      2, "region", 2.0)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables),
               jax.device_get(population.member(resumed, 1)))
  with open(os.path.join(workdir, population.MANIFEST)) as f:
    assert json.load(f)["members"] == [m.as_dict() for m in members]


# ----------------------------------------------------------------------------
# The benchmark.


def _benchmark():
  from benchmarks import population_benchmark as module  # pylint: disable=g-import-not-at-top
  return module


def test_the_default_form_is_the_fastest_that_beats_sequential_runs():
  fastest = _benchmark().fastest_form
  rows = [{"members": 4, "form": "vmap", "ratio": 1.3},
          {"members": 4, "form": "unroll", "ratio": 1.1},
          {"members": 8, "form": "map", "ratio": 2.0}]
  assert fastest(rows) == "vmap"
  # None beats sequential runs: unroll, the single run's program P times.
  assert fastest([{**r, "ratio": 0.8} for r in rows]) == "unroll"
  assert fastest([]) == "unroll"


@pytest.mark.slow  # compiles the tiny step three times, optimised
def test_population_benchmark_writes_json(tmp_path):
  out = tmp_path / "population.json"
  _benchmark().main(["--out", str(out), "--config", "configs/tiny.py",
                     "--sizes", "1", "2", "--forms", "vmap", "--steps", "1",
                     "--repeats", "1", "--num-images", "16"])
  result = json.loads(out.read_text())
  assert result["complete"] and result["command"].startswith(
      "python -m benchmarks.population_benchmark")
  assert [(r["members"], r["form"]) for r in result["rows"]] == [
      (1, "vmap"), (2, "vmap")]
  for row in result["rows"]:
    assert row["ratio"] > 0 and row["compile_s"] > 0
    assert row["member_img_per_s"] > 0 and row["xla_mem_bytes"] > 0
