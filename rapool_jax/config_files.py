"""Config files: ``PATH[:ARG]`` to the ConfigDict its ``get_config`` returns.

The one loader of the project: ``main`` checks a ``--config`` with it before
ml_collections reads the file, and ``launch/`` and the tests load with it.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

from rapool_jax import errors

# The repository: a relative config path not found in the working directory
# is looked up here, so launch scripts and tests run from any folder.
REPO = pathlib.Path(__file__).resolve().parents[1]


def resolve(spec: str) -> str:
  """``PATH[:ARG]`` with PATH absolute (the working directory, then the
  repository); a missing file is a one-line error."""
  path, sep, arg = spec.partition(":")
  if not os.path.isabs(path) and not os.path.exists(path):
    path = str(REPO / path)
  if not os.path.isfile(path):
    raise errors.UserError(f"config file {spec.partition(':')[0]} not found")
  return os.path.abspath(path) + sep + arg


def load(spec: str):
  """Runs ``PATH[:ARG]``'s ``get_config`` as ml_collections will. A file that
  does not parse, lacks ``get_config`` or rejects ``ARG`` stops with one
  line that keeps the file's own message."""
  path, has_arg, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise errors.UserError(f"config file {path} not found")
  module_spec = importlib.util.spec_from_file_location(
      f"rapool_config_{pathlib.Path(path).stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise errors.UserError(f"config file {path}, line {e.lineno}: "
                           f"SyntaxError: {e.msg}") from None
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(f"config file {path} fails to load: "
                           f"{errors.one_line(e)}") from None
  if not callable(getattr(module, "get_config", None)):
    raise errors.UserError(f"config file {path} defines no get_config() "
                           "function")
  try:
    return module.get_config(arg) if has_arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(f"config {spec}: {errors.one_line(e)}") from None
