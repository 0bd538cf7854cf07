"""The tests compile without XLA's optimisation passes (conftest.py); the main
job compiles with them. Both builds of the same run must agree."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO


def _scores(workdir, row):
  with open(os.path.join(workdir, "predictions", "test", f"{row}.csv")) as f:
    return np.array([float(r["score"]) for r in csv.DictReader(f)])


@pytest.mark.slow  # a whole tiny run in a subprocess
def test_optimised_build_gives_the_tests_results(tiny_run, data_dir, tmp_path):
  unoptimised, _ = tiny_run
  assert os.environ.get("JAX_DISABLE_MOST_OPTIMIZATIONS") in ("1", None)
  optimised = str(tmp_path / "optimised")
  subprocess.run(
      [sys.executable, "-m", "rapool_jax.main", "--config", "configs/tiny.py",
       "--workdir", optimised, f"--config.data.data_dir={data_dir}"],
      cwd=REPO, check=True, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "0"})
  # The trained networks: other fusions, so equal up to float rounding
  # carried through 11 SGD steps.
  for row in ("step_2_gap", "step_4_region_pooling"):
    np.testing.assert_allclose(_scores(optimised, row),
                               _scores(unoptimised, row), atol=2e-3)
  # RankOpt's projected ascent amplifies rounding: same scale, not the bits.
  a = _scores(optimised, "step_4_rankopt")
  b = _scores(unoptimised, "step_4_rankopt")
  assert np.corrcoef(a, b)[0, 1] > 0.95
