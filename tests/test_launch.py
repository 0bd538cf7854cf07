"""Launch scripts: smoke runs of the sweep, ablation and classifier comparison,
the fan-out runner (failures, SLURM scripts), aggregation, linear baselines.

The smoke runs share one lambda sweep (a Steps 2-3 base and two Step-4 runs);
the ablation and the comparison reuse its finished runs, which also checks
that a launch script skips runs that have already finished.
"""

import json
import os
import re
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from rapool_jax import evaluate
from rapool_jax.analysis import crossval as cv_analysis


from launch import ablate_pooling
from launch import aggregate
from launch import common
from launch import crossval_report
from launch import fanout
from launch import sweep_lambda


def _script(name, *args, env=None):
  proc = subprocess.run([sys.executable, "-m", f"launch.{name}", *args], cwd=REPO,
                        capture_output=True, text=True, env=env)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  return proc.stdout


def _hardlink_copy(src, dst):
  shutil.copytree(src, dst, copy_function=os.link)


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
  """Environment of the smoke runs: cache every compilation across runs."""
  env = dict(os.environ)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return env, str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_dir, cache_env):
  env, cache = cache_env
  root = str(tmp_path_factory.mktemp("sweep"))
  out = _script("sweep_lambda", "--smoke", "--workdir", root,
                "--compile-cache", cache, "--",
                f"--config.data.data_dir={data_dir}", env=env)
  return root, out


@pytest.mark.slow  # shares a sweep of whole runs
def test_sweep_lambda_smoke_trains_steps_2_3_once(sweep):
  root, out = sweep
  with open(os.path.join(root, "shared", "results.json")) as f:
    base = json.load(f)
  assert sorted(base["stages"]) == ["classification", "segmentation"]
  step2 = base["rows"][0]
  for lam in sweep_lambda.SMOKE_GRID:
    run = os.path.join(root, f"lambda_{common.value_tag(lam)}")
    with open(os.path.join(run, "results.json")) as f:
      results = json.load(f)
    assert results["eval_split"] == "validation"
    assert results["rows"][0] == step2  # Step 2 reused, not retrained
    with open(os.path.join(run, "config.json")) as f:
      assert json.load(f)["stages"]["joint"]["lambda_seg"] == lam
    log = open(os.path.join(run, fanout.LOG_FILE)).read()
    assert "[classification] resumed" in log and "[segmentation] resumed" in log
    assert "[classification] step" not in log
    assert fanout.read_status(run)["returncode"] == 0
    # Hard links: the lambda runs hold no copy of the base's checkpoints.
    ckpt = os.path.join("checkpoints", "classification")
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(run, ckpt))
             for f in fs]
    assert files and all(os.stat(f).st_nlink > 1 for f in files)
  table = open(os.path.join(root, "table1.md")).read()
  assert "| λ | 0.1 | 7.5 |" in table
  assert "| paper AUC | 0.818 | 0.863 |" in table
  rows = json.load(open(os.path.join(root, "table1.json")))["rows"]
  assert [r["state"] for r in rows] == ["ok", "ok"]
  assert all(0 <= r["auc"] <= 1 and 0 <= r["jaccard"] <= 1 for r in rows)
  assert os.path.getsize(os.path.join(root, "table1.png")) > 10_000
  assert "have no results" not in table


@pytest.mark.slow  # shares a sweep of whole runs
def test_ablate_pooling_smoke_reuses_a_finished_base(sweep, tmp_path, data_dir,
                                                     cache_env):
  root, _ = sweep
  env, cache = cache_env
  out_dir = str(tmp_path / "ablate")
  # The sweep's base is exactly this ablation's base (same config and seed).
  _hardlink_copy(os.path.join(root, "shared"),
                 os.path.join(out_dir, "bases", "config_seed0"))
  out = _script("ablate_pooling", "--smoke", "--workdir", out_dir,
                "--eval-split", "validation", "--compile-cache", cache, "--",
                f"--config.data.data_dir={data_dir}", env=env)
  assert "base_config_seed0: already finished, skipped" in out
  table = json.load(open(os.path.join(out_dir, "table2.json")))
  rows = {r["variant"]: r for r in table["rows"]}
  assert set(rows) == {"Step 2 only (GAP)", "gap", "region"}
  with open(os.path.join(out_dir, "runs", "config", "gap", "seed0",
                         "results.json")) as f:
    gap = json.load(f)
  assert gap["rows"][1]["model"] == "Step 4: gap"
  # "region" at the config's lambda (7.5) is the sweep's lambda 7.5 run.
  with open(os.path.join(root, "lambda_7.5", "results.json")) as f:
    same = json.load(f)["rows"][1]["auc"]
  assert rows["region"]["step4"]["auc"] == [same]
  md = open(os.path.join(out_dir, "table2.md")).read()
  assert "| config | region |" in md and "1/1 |" in md
  assert os.path.getsize(os.path.join(out_dir, "table2.png")) > 10_000


@pytest.mark.slow  # shares a sweep of whole runs
def test_compare_classifiers_smoke(sweep, tmp_path, data_dir):
  root, _ = sweep
  out_dir = str(tmp_path / "table3")
  # A finished run in OUT/run: the smoke job is skipped, the comparison runs.
  _hardlink_copy(os.path.join(root, "lambda_7.5"), os.path.join(out_dir, "run"))
  out = _script("compare_classifiers", "--smoke", "--workdir", out_dir,
                "--", f"--config.data.data_dir={data_dir}")
  assert "run: already finished, skipped" in out
  rows = {r["name"]: r for r in
          json.load(open(os.path.join(out_dir, "table3.json")))["rows"]}
  with open(os.path.join(out_dir, "run", "results.json")) as f:
    results = {r["model"]: r for r in json.load(f)["rows"]}
  # Same network, same features: the run's own numbers come back.
  head = rows["softmax head @ 0.5"]
  assert head["auc"] == pytest.approx(results["Step 4: region pooling"]["auc"])
  # The sweep reports on validation, so RankOpt's threshold comes from the
  # training split (launch/common.py:report_split_overrides).
  ranked = rows["RankOpt @ Youden(train)"]
  assert ranked["auc"] == pytest.approx(results["Step 4 + RankOpt"]["auc"])
  assert ranked["sensitivity"] == pytest.approx(
      results["Step 4 + RankOpt"]["sensitivity"])
  for r in rows.values():
    assert r["at_spec"]["specificity"] >= 0.884
  assert os.path.getsize(os.path.join(out_dir, "table3_roc.png")) > 10_000


@pytest.mark.slow  # shares a sweep of whole runs
def test_aggregate_collects_a_sweep(sweep):
  root, _ = sweep
  runs = aggregate.find_runs([root])
  assert sorted(r.name for r in runs) == ["lambda_0.1", "lambda_7.5", "shared"]
  assert all(r.state == "ok" for r in runs)
  out = subprocess.run(
      [sys.executable, "-m", "launch.aggregate", root, "--model",
       "Step 4 + RankOpt", "--plot", os.path.join(root, "a.png")],
      cwd=REPO, capture_output=True, text=True, check=True).stdout
  assert "3 of 3 runs finished" in out
  assert out.count("| Step 4 + RankOpt |") == 2


@pytest.mark.slow  # three tiny fold runs one after another, then as one
def test_crossval_smoke_population_matches_the_sequential_runs(
    tmp_path, data_dir, cache_env):
  env, cache = cache_env
  out = {}
  for name, flags in (("seq", ()), ("pop", ("--population",))):
    _script("crossval", "--smoke", *flags, "--workdir", str(tmp_path / name),
            "--compile-cache", cache, "--",
            f"--config.data.data_dir={data_dir}", env=env)
    out[name] = str(tmp_path / name / "report")
  assert crossval_report.main(["--check", out["pop"]]) == 0
  with open(os.path.join(out["seq"], "runs.csv")) as a, open(
      os.path.join(out["pop"], "runs.csv")) as b:
    assert a.read() == b.read() == ("fold,seed,finished\n0,0,1\n1,0,1\n"
                                    "2,0,1\n")
  seq, pop = (cv_analysis.read_tables(out[n]) for n in ("seq", "pop"))
  for key in cv_analysis.KEYS:  # image by image, in the same order
    np.testing.assert_array_equal(pop["oof"][key], seq["oof"][key])
  config = common.load_config(common.TINY_CONFIG)
  networks = {evaluate.row_slug(config.stages[n].report_as)
              for n in config.stage_order if config.stages[n].report_as}
  assert pop["arms"] == seq["arms"] and networks < set(seq["arms"])
  # Within the population's tolerances (tests/test_run_population.py): the
  # networks' probabilities 1e-4, the linear heads' unbounded scores 1e-3.
  tol = {a: (1e-4, 0) if a in networks else (1e-3, 1e-3) for a in seq["arms"]}
  for arm, (atol, rtol) in tol.items():
    np.testing.assert_allclose(pop["oof"][arm], seq["oof"][arm], atol=atol,
                               rtol=rtol, err_msg=arm)
  for a, b in zip(pop["thresholds"].to_dict("records"),
                  seq["thresholds"].to_dict("records"), strict=True):
    assert [a[k] for k in ("fold", "seed", "arm")] == [
        b[k] for k in ("fold", "seed", "arm")]
    for k in set(a) - {"fold", "seed", "arm"}:
      assert float(a[k]) == pytest.approx(float(b[k]), abs=tol[a["arm"]][0],
                                          rel=tol[a["arm"]][1]), (a, k)


def test_fanout_records_failures_and_aggregate_reports_them(tmp_path):
  config = str(REPO / "configs" / "tiny.py")
  bad = fanout.Job(name="bad", workdir=str(tmp_path / "bad"), config=config,
                   overrides=["--config.no_such_key=1"])
  dep = fanout.Job(name="dep", workdir=str(tmp_path / "dep"), config=config,
                   phase=1, stages_from=bad.workdir, stages=["classification"])
  results = fanout.run_local([bad, dep])
  assert results == {"bad": 2, "dep": 1}
  assert fanout.read_status(bad.workdir)["returncode"] == 2
  never = fanout.Job(name="never", workdir=str(tmp_path / "never"),
                     config=config, phase=1)
  fanout.write_jobs(str(tmp_path / fanout.JOBS_FILE), [bad, dep, never])
  runs = {r.name: r for r in aggregate.find_runs([str(tmp_path)])}
  assert runs["bad"].state == "failed" and "no_such_key" in runs["bad"].reason
  assert runs["dep"].state == "failed"
  assert "did not finish" in runs["dep"].reason
  assert runs["never"].state == "missing"
  text = aggregate.status_section(list(runs.values()))
  assert "3 of 3 runs have no results" in text


def test_slurm_scripts_chain_the_phases(tmp_path, monkeypatch):
  jobs = sweep_lambda.make_jobs(str(REPO / "configs" / "tiny.py"),
                                str(tmp_path), (0.1, 1, 10), [])
  path = str(tmp_path / fanout.JOBS_FILE)
  fanout.write_jobs(path, jobs)
  scripts = fanout.slurm_scripts(path, str(tmp_path / "slurm"),
                                 sbatch_extra="--partition=gpu", max_parallel=2)
  assert [p for p, _ in scripts] == [-1, 0, 1]
  text = open(scripts[2][1]).read()
  assert "#SBATCH --array=0-2%2" in text and "#SBATCH --partition=gpu" in text
  assert "run-one --jobs" in text and "--phase 1" in text
  assert not re.search(r"@[A-Z_]+@", text), "unfilled template field"
  for _, s in scripts:
    subprocess.run(["bash", "-n", s], check=True)
  # A fake sbatch: each phase must wait for the one before.
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  fake = bin_dir / "sbatch"
  fake.write_text("#!/bin/sh\necho \"$@\" >> " + str(tmp_path / "calls") +
                  "\necho $(wc -l < " + str(tmp_path / "calls") + ")\n")
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  assert fanout.submit_slurm(scripts) == ["1", "2", "3"]
  calls = open(tmp_path / "calls").read().splitlines()
  assert "--dependency" not in calls[0]
  assert "--dependency=afterany:1" in calls[1]
  assert "--dependency=afterany:2" in calls[2]


def test_run_one_is_what_an_array_task_runs(tmp_path):
  job = fanout.Job(name="p", workdir=str(tmp_path / "p"),
                   config="configs/tiny.py",
                   overrides=[f"--config.data.data_dir={tmp_path / 'tfds'}"],
                   module="launch.prepare_data", done_file="prepared.json")
  fanout.write_jobs(str(tmp_path / "jobs.json"), [job])
  assert fanout.main(["run-one", "--jobs", str(tmp_path / "jobs.json"),
                      "--phase", "0", "--index", "0"]) == 0
  assert fanout.is_finished(job)
  assert fanout.main(["run-one", "--jobs", str(tmp_path / "jobs.json"),
                      "--phase", "0", "--index", "3"]) == 2


def test_dry_run_job_lists(tmp_path, capsys):
  root = str(tmp_path / "sweep")
  assert sweep_lambda.main(["--config", "configs/default.py", "--workdir", root,
                            "--dry-run", "--",
                            "--config.train.batch_size=16"]) == 0
  jobs = fanout.read_jobs(os.path.join(root, fanout.JOBS_FILE))
  assert [j.phase for j in jobs] == [-1, 0] + [1] * 9
  shared = jobs[1]
  assert ("--config.stage_order=('classification', 'segmentation')"
          in shared.overrides)
  assert "--config.rankopt.enabled=False" in shared.overrides
  for j in jobs[2:]:
    assert j.stages_from == shared.workdir
    assert "--config.train.batch_size=16" in j.overrides
    assert "--config.data.eval_split=validation" in j.overrides
    assert any(o.startswith("--config.systems.compilation_cache_dir=")
               for o in j.overrides)
  assert "lambda_seg=12.5" in capsys.readouterr().out

  root = str(tmp_path / "ablate")
  ablate_pooling.main(["--config", "configs/default.py", "--workdir", root,
                       "--backbones", "resnet18,resnet50", "--dry-run"])
  jobs = fanout.read_jobs(os.path.join(root, fanout.JOBS_FILE))
  bases = [j for j in jobs if j.phase == 0]
  runs = [j for j in jobs if j.phase == 1]
  assert len(bases) == 2 * 3 * 2  # backbones x seeds x {stride 8, os16}
  assert len(runs) == 2 * 3 * len(ablate_pooling.DEFAULT_VARIANTS)
  os16 = [j for j in runs if j.meta["variant"] == "os16"]
  assert all("--config.model.output_stride=16" in j.overrides and
             "os16" in j.stages_from for j in os16)
  mask = [j for j in runs if j.meta["variant"] == "mask_oracle"][0]
  assert "--config.stages.joint.pooling=mask_oracle" in mask.overrides
  assert not mask.stages_from.endswith("os16_seed0")


def test_vgg16_ablation_sets_the_backbone(tmp_path):
  root = str(tmp_path / "vgg")
  ablate_pooling.main(["--config", "configs/default.py", "--workdir", root,
                       "--backbones", "vgg16", "--dry-run"])
  jobs = fanout.read_jobs(os.path.join(root, fanout.JOBS_FILE))
  assert [j for j in jobs if j.phase == 1] and all(
      "--config.model.backbone=vgg16" in j.overrides
      for j in jobs if j.meta.get("backbone") == "vgg16")
  with pytest.raises(SystemExit, match="unknown backbone 'vgg15'"):
    ablate_pooling.main(["--config", "configs/default.py", "--workdir", root,
                         "--backbones", "vgg15", "--dry-run"])

