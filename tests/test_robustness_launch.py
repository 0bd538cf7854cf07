"""launch/robustness.py on a finished tiny run with the CV's arms on
official splits (recipe 2's shape): its CSVs, the whole version checked
against the run's own predictions, and a second call adding nothing."""

import pandas as pd
import pytest

from conftest import load_config
from conftest import load_module


@pytest.mark.slow
def test_official_run_gives_recipe2_csvs(data_dir, tmp_path):
  from launch import robustness
  from rapool_jax import disrupt
  from rapool_jax import run
  config = load_config("tiny")
  config.data.data_dir = data_dir
  load_module("configs/isic2017.py").add_arms(config, ("joint",), 3)
  run.train_and_evaluate(config, str(tmp_path / "runs" / "seed0"))
  runs = robustness.finished_runs(str(tmp_path / "runs"), "seed*")
  out = str(tmp_path / "out")
  (tmp_path / "out").mkdir()
  robustness.official_strata_scores(runs, "", out)
  robustness.update_versions(runs, out, "")
  robustness.update_runs(runs, out, "")

  strata = pd.read_csv(tmp_path / "out" / "strata_scores.csv")
  assert len(strata) == config.data.num_test
  assert set(strata.split) == {"test"} and set(strata.models) == {1}
  versions = pd.read_csv(tmp_path / "out" / "versions.csv")
  assert sorted(versions.version.unique()) == sorted(disrupt.VERSIONS)
  assert len(versions) == len(disrupt.VERSIONS) * config.data.num_validation
  own = pd.read_csv(tmp_path / "runs" / "seed0" / "predictions" / "validation"
                    / "gap_control.csv")
  whole = versions[versions.version == "whole"]
  assert list(whole.image) == list(own.image)
  assert (whole["GAP control"] - own.score).abs().max() < 1e-4
  # Empty where an arm's melanoma CAM has no positive part (HYPOTHESES.md).
  cam = versions[["cam RAP", "cam GAP control"]].stack().dropna()
  assert len(cam) and ((cam >= 0) & (cam <= 1)).all()
  props = pd.read_csv(tmp_path / "out" / "runs.csv").iloc[0]
  assert (props.width, props["Step-4 steps"], props["crop px"]) == (0.0625, 4, 32)

  robustness.update_versions(runs, out, "")   # resumes: nothing new
  assert len(pd.read_csv(tmp_path / "out" / "versions.csv")) == len(versions)


@pytest.mark.slow
def test_fullsize_script_runs_the_protocol_tiny_on_cpu(tmp_path):
  """launch/robustness_fullsize.sh --tiny: the device script's commands end
  to end on the shared ISIC copy, a tiny network at 32 px."""
  from conftest import REPO, SHARED_ISIC
  artefacts = SHARED_ISIC.parent / "isic2017-artefacts" / "artefacts.csv"
  if not (SHARED_ISIC.exists() and artefacts.exists()):
    pytest.skip(f"needs {SHARED_ISIC} and {artefacts}")
  import json
  import os
  import subprocess
  proc = subprocess.run(
      ["bash", "launch/robustness_fullsize.sh", str(tmp_path / "out"),
       str(SHARED_ISIC), str(artefacts), "--tiny"], cwd=REPO,
      env={**os.environ, "RUNS": str(tmp_path / "runs")},
      capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = tmp_path / "out" / "fullsize"
  results = json.loads((out / "results.json").read_text())
  assert results["recipe name"] == "fullsize"
  assert results["strata_oof"]["models per image"] == 3   # 3 seeds, fold 0
  assert results["recipe"]["depth"] == "tiny" and results["recipe"]["runs"] == 3
  assert {r["version"] for r in results["versions"]} == {
      "whole", "lesion_only", "background_only", "bbox"}
  assert "every figure recomputes" in proc.stdout
  assert (tmp_path / "out" / "robustness_fullsize.log").exists()


def test_a_recipe2_workdir_without_finished_runs_is_one_line(tmp_path):
  from launch import robustness
  from rapool_jax import errors
  with pytest.raises(errors.UserError, match="no finished run"):
    robustness.main(["--out", str(tmp_path / "out"),
                     "--recipe2-workdir", str(tmp_path / "none")])
