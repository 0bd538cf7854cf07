"""The project's shape (scripts/code_shape.py): imports point down the
layers with no circle, no function over 50 lines, no class over 100, no
import inside a function without its reason, in rapool_jax/, launch/ and
benchmarks/; the line counts are printed."""

import ast
import subprocess
import sys

from conftest import REPO
from conftest import load_module


def _code_shape():
  return load_module("scripts/code_shape.py")


def test_the_project_keeps_its_shape():
  found, figures = _code_shape().problems()
  assert not found, "\n".join(found)
  lines = figures["lines"]
  assert lines["rapool_jax"] > 1000 and lines["launch"] > 100  # walk found them
  assert lines["outside tests/"] > sum(
      lines[p] for p in ("rapool_jax", "launch", "benchmarks"))


def test_the_report_prints_each_part_count():
  out = subprocess.run([sys.executable, "scripts/code_shape.py"], cwd=REPO,
                       capture_output=True, text=True, check=True).stdout
  for part in ("rapool_jax:", "launch:", "benchmarks:", "outside tests/:"):
    assert part in out, out


def test_a_circle_and_an_upward_import_are_found():
  shape = _code_shape()
  assert shape.find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [
      "a", "b", "c", "a"]
  assert shape.find_cycle({"a": {"b"}, "b": set()}) is None
  assert shape.layer_of("models.vgg") < shape.layer_of("pretrained")
  assert shape.layer_of("train") < shape.layer_of("evaluate") < shape.layer_of(
      "report") < shape.layer_of("run")


def _import_problems(package, module, code):
  shape = _code_shape()
  known = {"rapool_jax": {"train", "errors"}, "launch": {"common", "x"},
           "benchmarks": {"timing", "x"}}
  return shape.import_problems(package, module, f"{package}/{module}.py",
                               ast.parse(code), known, {})


def test_imports_across_packages_and_inside_functions_are_found():
  assert _import_problems("launch", "x", "from rapool_jax import train\n"
                          "from launch import common\n") == []
  assert _import_problems("launch", "x", "from benchmarks import timing\n")
  assert _import_problems("rapool_jax", "errors", "from launch import common\n")
  assert _import_problems("rapool_jax", "errors", "from rapool_jax import train\n")
  lazy = "def f():\n  import scipy\n"
  assert "inside a function" in _import_problems("benchmarks", "x", lazy)[0]
  assert _import_problems("benchmarks", "x", lazy.replace("scipy", "torch")) == []
