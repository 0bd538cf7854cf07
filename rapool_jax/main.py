"""Entry point: ``python -m rapool_jax.main --config configs/default.py --workdir DIR``.

Config values are overridden on the command line, e.g.
``--config.train.batch_size=32 --config.stages.joint.lambda_seg=5``.
Set ``RAPOOL_DEBUG=1`` to see full tracebacks instead of one-line errors, and
``RAPOOL_DEFAULT_XLA_FLAGS=1`` to skip the CPU convolution flag of ``xla_flags.py``.
"""

from __future__ import annotations

import importlib.util
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from rapool_jax import config_lib
from rapool_jax import distributed
from rapool_jax import errors
from rapool_jax import run
from rapool_jax import xla_flags

FLAGS = flags.FLAGS
# Every stage checkpoints, so the same command picks up where this stopped.
INTERRUPTED = "interrupted; the same command resumes"
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                lock_config=True)


def check_config_file(spec: str) -> None:
  """Runs ``PATH[:ARG]``'s ``get_config`` once as ml_collections will, so
  that a file that does not parse, lacks ``get_config`` or rejects ``ARG``
  stops with one line that keeps the file's own message."""
  path, has_arg, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise errors.UserError(f"config file {path} not found")
  module_spec = importlib.util.spec_from_file_location("rapool_config_check",
                                                       path)
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
    module.get_config(arg) if has_arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(f"config {spec}: {errors.one_line(e)}") from None


def parse_flags(argv):
  """absl parsing, with every bad flag or config key reported on one line."""
  with errors.one_line_errors():
    for i, arg in enumerate(argv[1:], start=1):
      spec = (arg.split("=", 1)[1] if arg.startswith("--config=") else
              argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
      if spec is not None:
        check_config_file(spec)
    try:
      rest = FLAGS(argv)
    except flags.Error as e:
      raise errors.UserError(f"command line: {errors.one_line(e)}") from None
    except (AttributeError, KeyError) as e:
      overrides = [a for a in argv if a.startswith("--config.")]
      hints = [h for h in (config_lib.legacy_key_hint(
          a[2:].split("=", 1)[0]) for a in overrides) if h]
      raise errors.UserError(
          f"unknown config key among {overrides}: {errors.one_line(e)}"
          + "".join(f"; {h}" for h in hints)) from None
    if FLAGS.config is None or not FLAGS.workdir:
      raise errors.UserError("both --config=configs/NAME.py and --workdir=DIR "
                             "are required")
    if len(rest) > 1:
      raise errors.UserError(f"unexpected arguments: {rest[1:]}")
  return rest


def main(argv):
  del argv
  # orbax and TFDS log every checkpoint and file at INFO; progress is printed.
  logging.set_verbosity(logging.WARNING)
  # TFDS recommends OpenCV once per run; PIL decodes these splits in seconds.
  logging.get_absl_logger().addFilter(
      lambda record: "OpenCV is not installed" not in record.getMessage())
  with errors.one_line_errors(INTERRUPTED):
    # Before the first use of a device (importing jax starts no backend).
    if os.environ.get("RAPOOL_DEFAULT_XLA_FLAGS") != "1":
      xla_flags.apply_xla_flags(xla_flags.cpu_xla_flags())
    distributed.maybe_initialize()
    run.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
