"""Dry-parses many commands in one interpreter. Run as ``python -c`` from the
repository root (tests/test_commands.py), it reads ``[[target, argv], ...]``
(JSON) on stdin and prints ``[[returncode, output], ...]``.

Each command parses in a child forked from this process after the heavy
imports, so absl's global FLAGS and ml_collections' reading of ``sys.argv``
start clean per command, and the imports are paid once (a fresh interpreter
per command cost 2-5 s each, most of the quick tier's time).
"""

import argparse
import contextlib
import importlib
import io
import json
import multiprocessing
import sys

# Everything the targets import except the two modules that define absl
# flags (rapool_jax.main and rapool_jax.predict would clash in one process).
PRELOADED = ("launch.fanout", "rapool_jax.evaluate", "rapool_jax.train",
             "rapool_jax.data.pipeline")


class Parsed(Exception):
  pass


def parse(target: str, argv: list[str]) -> None:
  """Parses ``argv`` as ``python -m target`` would, without running it;
  exits non-zero (absl, argparse or ``sys.exit``) where it does not parse."""
  if target.startswith("rapool_jax."):
    sys.argv = [target] + argv
    importlib.import_module(target).parse_flags(sys.argv)
    return
  from launch import fanout
  from rapool_jax import main as main_lib
  original = argparse.ArgumentParser.parse_args

  def parse_args(self, args=None, namespace=None):
    raise Parsed(original(self, args, namespace))
  argparse.ArgumentParser.parse_args = parse_args
  module = importlib.import_module(target)
  try:
    module.main(argv)
  except Parsed as e:
    args = e.args[0]
  else:
    sys.exit(f"{target}.main returned without parsing its arguments")
  _, overrides = fanout.split_overrides(argv)
  if overrides:
    config = ("configs/tiny.py" if getattr(args, "smoke", False) else
              getattr(args, "config", "")
              or getattr(module, "DEFAULT_CONFIG", ""))
    if not config:
      sys.exit(f"overrides {overrides} but no config to check them against")
    sys.argv = ["main", "--config", config, "--workdir", "unused"] + overrides
    main_lib.parse_flags(sys.argv)


def run_one(job) -> tuple[int, str]:
  out = io.StringIO()
  code = 0
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    try:
      parse(*job)
      print("parsed")
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None
                                                     else 1)
      if not isinstance(e.code, (int, type(None))):
        print(e.code)
    except BaseException as e:  # noqa: BLE001 (reported, not raised)
      code = 1
      print(f"{type(e).__name__}: {e}")
  return code, out.getvalue()


if __name__ == "__main__":
  for name in PRELOADED:
    importlib.import_module(name)
  jobs = json.load(sys.stdin)
  # A fresh fork of this process per command (maxtasksperchild=1).
  with multiprocessing.get_context("fork").Pool(
      2, maxtasksperchild=1) as pool:
    print(json.dumps(pool.map(run_one, jobs, chunksize=1)))
