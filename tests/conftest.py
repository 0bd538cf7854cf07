"""Shared fixtures: the tiny config and a session-wide TFDS data dir."""

import os
import pathlib

import pytest

# XLA's optimisation passes are most of a tiny model's compile time and buy
# nothing at test sizes: without them the quick tier takes half as long
# (198 s instead of 384 s on 2 cores). The variable reaches the main jobs
# that tests start as subprocesses, so in-process and command-line runs still
# agree to the bit; test_optimised_compile.py checks the optimised
# build, and RAPOOL_TEST_XLA_OPT=1 runs every test with all passes on.
if os.environ.get("RAPOOL_TEST_XLA_OPT") != "1":
  os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# Tests compile as ``python -m rapool_jax.main`` does (XLA:CPU convolution flag),
# so in-process runs and the main job agree to the bit.
from rapool_jax import xla_flags  # noqa: E402  (imports jax, starts no backend)
from rapool_jax import config_files  # noqa: E402

xla_flags.apply_xla_flags(xla_flags.cpu_xla_flags())

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_ISIC = REPO.parent / "shared" / "data" / "isic2017-256"


def load_module(relative_path: str):
  """A file of the repository (a config, a script) as a module."""
  import importlib.util
  path = REPO / relative_path
  spec = importlib.util.spec_from_file_location(
      "repo_" + path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(name: str):
  return config_files.load(config_files.resolve(f"configs/{name}.py"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture()
def tiny_config(data_dir):
  config = load_config("tiny")
  config.data.data_dir = data_dir
  return config


@pytest.fixture(scope="session")
def shared_isic():
  if not SHARED_ISIC.is_dir():
    pytest.skip(f"shared ISIC 2017 copy not found at {SHARED_ISIC}")
  return SHARED_ISIC


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_dir):
  """One finished tiny run of the whole pipeline, shared by several tests."""
  from rapool_jax import run
  config = load_config("tiny")
  config.data.data_dir = data_dir
  workdir = str(tmp_path_factory.mktemp("tiny_run"))
  results = run.train_and_evaluate(config, workdir)
  return workdir, results
