"""Entry point: ``python -m rapool_jax.main --config configs/default.py --workdir DIR``.

Config values are overridden on the command line, e.g.
``--config.train.batch_size=32 --config.stages.joint.lambda_seg=5``.
With ``--seeds 0,1,2`` and/or ``--folds 0,1,2,3,4`` every seed x fold trains
as one population (``run_population.py``) into ``WORKDIR/member<p>/``.
Set ``RAPOOL_DEBUG=1`` to see full tracebacks instead of one-line errors, and
``RAPOOL_DEFAULT_XLA_FLAGS=1`` to skip the CPU convolution flag of ``xla_flags.py``.
"""

from __future__ import annotations

import ast
import os
import pathlib
import re

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from rapool_jax import config_files
from rapool_jax import config_lib
from rapool_jax import errors

FLAGS = flags.FLAGS
# Every stage checkpoints, so the same command picks up where this stopped.
INTERRUPTED = "interrupted; the same command resumes"
# configs/ beside the package (the repository), else in the working directory.
CONFIG_DIRS = (pathlib.Path(__file__).resolve().parents[1] / "configs",
               pathlib.Path("configs"))


def first_clause(text: str) -> str:
  """``text`` up to its first ``.``, ``;`` or ``,`` outside brackets."""
  depth = 0
  for i, ch in enumerate(text):
    depth += (ch in "([") - (ch in ")]")
    if depth == 0 and ch in ".;," and text[i + 1:i + 2] in ("", " "):
      return text[:i]
  return text


def docstring_variants(doc: str) -> list[tuple[str, str]]:
  """``(name, what it is for)`` per entry of a docstring's ``Variants ...:``
  table: ``  NAME  text`` lines, deeper-indented lines continuing the text;
  a blank or unindented line ends it."""
  entries, in_table = [], False
  for line in doc.splitlines():
    entry = re.match(r"  (\S+)\s{2,}(\S.*)", line)
    if line.startswith("Variants"):
      in_table = True
    elif in_table and entry:
      entries.append((entry[1], entry[2]))
    elif in_table and line.startswith("   ") and entries:
      entries[-1] = (entries[-1][0], f"{entries[-1][1]} {line.strip()}")
    elif in_table:
      break
  return [(name, first_clause(text)) for name, text in entries]


def config_catalogue() -> list[tuple[str, str]]:
  """``(--config value, what it is for)`` for every ``configs/*.py`` (its
  docstring's first line) and every variant its docstring lists."""
  folder = next((d for d in CONFIG_DIRS if d.is_dir()), None)
  rows = []
  for path in sorted(folder.glob("*.py")) if folder else ():
    name = f"configs/{path.name}"
    try:  # parsed, not run: listing the configs runs none of them
      doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    except (SyntaxError, OSError, ValueError) as e:
      rows.append((name, f"(unreadable: {errors.one_line(e)})"))
      continue
    rows.append((name, doc.splitlines()[0] if doc else "(no docstring)"))
    rows += [(f"{name}:{v}", text) for v, text in docstring_variants(doc)]
  return rows


def config_listing() -> str:
  """The configs and variants as an aligned table, one line each."""
  rows = config_catalogue()
  width = max((len(name) for name, _ in rows), default=0)
  return "\n".join(
      ["Configs (--config=PATH or PATH:VARIANT; variants combine, e.g. "
       "configs/isic2017.py:crossval,fullsize):"]
      + [f"  {name.ljust(width)}  {text}" for name, text in rows])


# absl's --help prints this module's docstring: the configs are listed there,
# read from configs/ at each start, so a new file or variant shows up.
__doc__ = f"{__doc__ or ''}\n{config_listing()}\n"
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
config_flags.DEFINE_config_file(
    "config", None, "Config file, PATH or PATH:VARIANT (listed above).",
    lock_config=True)
flags.DEFINE_list("seeds", [], "Members' seeds, comma-separated: seeds x "
                  "folds train as one population (default: one run).")
flags.DEFINE_list("folds", [], "Members' cross-validation folds, "
                  "comma-separated (with --seeds; default: the config's).")


def member_lists() -> tuple[list[int], list[int]]:
  """``(seeds, folds)`` of a population (both empty: a single run); one
  line naming a value that is not an integer or is given twice."""
  out = []
  for name in ("seeds", "folds"):
    given = ",".join(FLAGS[name].value)
    try:
      values = [int(v) for v in FLAGS[name].value]
    except ValueError:
      raise errors.UserError(f"--{name}={given}: comma-separated integers "
                             "expected") from None
    if twice := sorted({v for v in values if values.count(v) > 1}):
      # Two members of one seed and fold train the same run twice.
      raise errors.UserError(f"--{name}={given}: {twice} given more than "
                             "once; give each value once")
    out.append(values)
  if out[1] and not out[0]:
    out[0] = [FLAGS.config.seed]
  return out[0], out[1]


def parse_flags(argv):
  """absl parsing, with every bad flag or config key reported on one line."""
  with errors.one_line_errors():
    for i, arg in enumerate(argv[1:], start=1):
      spec = (arg.split("=", 1)[1] if arg.startswith("--config=") else
              argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
      if spec is not None:
        config_files.load(spec)  # one line for a bad file, before absl
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
                             "are required (--help lists the configs)")
    if len(rest) > 1:
      raise errors.UserError(f"unexpected arguments: {rest[1:]}")
    member_lists()
  return rest


def main(argv):
  del argv
  # orbax and TFDS log every checkpoint and file at INFO; progress is printed.
  logging.set_verbosity(logging.WARNING)
  # TFDS recommends OpenCV once per run; PIL decodes these splits in seconds.
  logging.get_absl_logger().addFilter(
      lambda record: "OpenCV is not installed" not in record.getMessage())
  with errors.one_line_errors(INTERRUPTED):
    # Imported here, not above: --help and flag errors answer in a second
    # instead of after JAX, flax and TFDS load (no cycle is involved).
    from rapool_jax import distributed  # pylint: disable=g-import-not-at-top
    from rapool_jax import run  # pylint: disable=g-import-not-at-top
    from rapool_jax import run_population  # pylint: disable=g-import-not-at-top
    from rapool_jax import xla_flags  # pylint: disable=g-import-not-at-top
    if os.environ.get("RAPOOL_DEFAULT_XLA_FLAGS") != "1":
      xla_flags.apply_xla_flags(xla_flags.cpu_xla_flags())
    distributed.maybe_initialize()
    seeds, folds = member_lists()
    if seeds:
      run_population.run_population(
          FLAGS.config, run_population.make_members(seeds, folds),
          FLAGS.workdir)
    else:
      run.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
