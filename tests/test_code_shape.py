"""The package's shape (scripts/code_shape.py): imports point down the
layers with no circle, no function over 50 lines, no class over 100, and
the package no larger than its budget."""

from conftest import load_module


def _code_shape():
  return load_module("scripts/code_shape.py")


def test_the_package_keeps_its_shape():
  found, figures = _code_shape().problems()
  assert not found, "\n".join(found)
  assert figures["lines"] > 1000  # the walk found the package


def test_a_circle_and_an_upward_import_are_found():
  shape = _code_shape()
  assert shape.find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [
      "a", "b", "c", "a"]
  assert shape.find_cycle({"a": {"b"}, "b": set()}) is None
  assert shape.layer_of("models.vgg") < shape.layer_of("pretrained")
  assert shape.layer_of("train") < shape.layer_of("evaluate") < shape.layer_of(
      "report") < shape.layer_of("run")
