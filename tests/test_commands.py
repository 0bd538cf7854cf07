"""Every command the README and docs give parses as written, and
``python -m rapool_jax.main --help`` lists the configs and their variants.

The commands are read from the fenced and indented code blocks of README.md,
launch/README.md and docs/*.md (backslash continuations joined, shell
variables set where the docs set them), then parsed without running the job:
absl programs with their own ``parse_flags``, launch scripts up to their
``parse_args``, and the config overrides after a launch script's ``--`` with
the main job's flags.
"""

import ast
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO

DOCS = ("README.md", "launch/README.md") + tuple(
    f"docs/{name}" for name in sorted(os.listdir(REPO / "docs"))
    if name.endswith(".md"))
COMMAND = re.compile(r"^python -m (rapool_jax|launch)\.\w+\s")
# launch/ and benchmarks/ are packages, run with -m.
BY_PATH = re.compile(r"\bpython3? (launch|benchmarks)/\w+\.py")
ASSIGNMENT = re.compile(r"^([A-Za-z_]\w*)=(.*)$")
FOR_LOOP = re.compile(r"^for (\w+) in (\S+)")
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def code_lines(text: str) -> list[tuple[int, str]]:
  """``(line number, line)`` of the fenced and indented code blocks."""
  out, fenced, previous_blank, indented = [], False, True, False
  for number, line in enumerate(text.splitlines(), start=1):
    if line.lstrip().startswith("```"):
      fenced = not fenced
    elif fenced:
      out.append((number, line))
    elif line.startswith("    ") and (previous_blank or indented):
      indented = True
      out.append((number, line))
    else:
      indented = False
    previous_blank = not line.strip()
  return out


def shell_lines(lines):
  """Joins backslash continuations: ``(first line number, command)``."""
  joined, start, parts = [], None, []
  for number, line in lines:
    start = number if start is None else start
    if line.rstrip().endswith("\\"):
      parts.append(line.rstrip()[:-1])
      continue
    joined.append((start, " ".join(parts + [line]).strip()))
    start, parts = None, []
  return joined


def expand(text: str, env: dict) -> str:
  def value(m):
    name = m[1] or m[2]
    assert name in env, f"${name} is used but never set in the docs"
    return env[name]
  return VARIABLE.sub(value, text)


def documented_commands():
  """``(where, argv)`` of every main/predict/launch command in the docs."""
  env = {"HOME": os.path.expanduser("~"), "PWD": str(REPO)}
  commands, fragments = [], []
  for doc in DOCS:
    for number, line in shell_lines(code_lines((REPO / doc).read_text())):
      where = f"{doc}:{number}"
      if m := ASSIGNMENT.match(line):
        env[m[1]] = " ".join(shlex.split(expand(m[2], env), comments=True))
      elif m := FOR_LOOP.match(line):
        env[m[1]] = m[2]
      elif line.startswith("--"):  # "add to any of the above" (launch/README)
        fragments.append((where, shlex.split(expand(line, env),
                                             comments=True)))
      else:
        commands += [(where, shlex.split(expand(part, env), comments=True))
                     for part in line.split("&&") if COMMAND.match(part.strip())]
  # The SLURM flags go "instead of --gpus" into each command that has it.
  for where, fragment in fragments:
    for command_where, argv in list(commands):
      if "--gpus" in argv and command_where.split(":")[0] == where.split(":")[0]:
        i = argv.index("--gpus")
        commands.append((f"{command_where}+{where}",
                         argv[:i] + fragment + argv[i + 2:]))
  return commands


def target_of(argv: list[str]) -> tuple[str, list[str]]:
  """The importable module a command runs, and its arguments."""
  assert argv[1] == "-m", argv
  return argv[2], argv[3:]


def dry_parse_all(argvs: list[list[str]]) -> list[tuple[int, str]]:
  """``(returncode, output)`` of parsing each command without running it
  (``tests/dry_parse.py``: one interpreter, a fork per command)."""
  proc = subprocess.run(
      # -c, as ``python -m`` would, puts the repository on sys.path.
      [sys.executable, "-c", (REPO / "tests" / "dry_parse.py").read_text()],
      input=json.dumps([list(target_of(argv)) for argv in argvs]),
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  return json.loads(proc.stdout.splitlines()[-1])


COMMANDS = documented_commands()
BAD_FLAGS = [
    ["python", "-m", "rapool_jax.predict", "--workdir", "w", "--no-such-flag"],
    ["python", "-m", "rapool_jax.main", "--config", "configs/tiny.py",
     "--workdir", "w", "--config.train.no_such_key=1"],
    ["python", "-m", "launch.aggregate", "runs/t1", "--no-such-flag"],
    ["python", "-m", "launch.crossval", "--workdir", "w", "--",
     "--config.data.no_such_key=1"],
]


@pytest.fixture(scope="module")
def parsed():
  """``{tuple(argv): (returncode, output)}`` of every command tested here."""
  argvs = [argv for _, argv in COMMANDS] + BAD_FLAGS
  return dict(zip(map(tuple, argvs), dry_parse_all(argvs)))


def test_the_docs_commands_are_all_found():
  found = {target_of(argv)[0] for _, argv in COMMANDS}
  assert {"rapool_jax.main", "rapool_jax.predict", "launch.crossval",
          "launch.crossval_report", "launch.sweep_lambda",
          "launch.ablate_pooling", "launch.compare_classifiers",
          "launch.aggregate"} <= found, found
  assert any("--slurm" in argv for _, argv in COMMANDS)


def test_no_doc_runs_a_launch_or_benchmark_script_by_path():
  docs = [*DOCS, "benchmarks/README.md",
          *(str(p.relative_to(REPO)) for p in REPO.glob("results/*/COMMAND.md"))]
  by_path = [f"{doc}: {m[0]}" for doc in docs
             for m in BY_PATH.finditer((REPO / doc).read_text())]
  assert not by_path, by_path


@pytest.mark.parametrize("where,argv", COMMANDS,
                         ids=[where for where, _ in COMMANDS])
def test_documented_command_parses(where, argv, parsed):
  returncode, output = parsed[tuple(argv)]
  assert returncode == 0 and output.strip().endswith("parsed"), (
      f"{where}: {' '.join(argv)}\n{output}")


@pytest.mark.parametrize("argv", BAD_FLAGS, ids=lambda argv: argv[2])
def test_a_bad_flag_fails_the_dry_parse(argv, parsed):
  returncode, output = parsed[tuple(argv)]
  assert returncode != 0, output


def test_predict_takes_both_spellings_of_norankopt():
  code = ("import sys; from rapool_jax import predict\n"
          "for spelling in sys.argv[1:]:\n"
          "  predict.FLAGS.unparse_flags()\n"
          "  predict.parse_flags(['predict', spelling])\n"
          "  print(predict.FLAGS.rankopt)")
  proc = subprocess.run([sys.executable, "-c", code, "--norankopt",
                         "--no-rankopt", "--rankopt"], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.stdout.split() == ["False", "False", "True"], proc.stderr


def test_main_help_lists_every_config_and_variant():
  proc = subprocess.run([sys.executable, "-m", "rapool_jax.main", "--help"],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  listed = dict(re.findall(r"^  (configs/\S+)\s{2,}(\S.*)$", proc.stdout,
                           re.M))
  for path in sorted((REPO / "configs").glob("*.py")):
    name = f"configs/{path.name}"
    assert listed.get(name), (name, proc.stdout)
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert listed[name] == doc.splitlines()[0]
  for variant in ("paper", "runlocal", "crossval", "crossval,fullsize",
                  "three_class"):
    assert listed.get(f"configs/isic2017.py:{variant}"), variant
  assert listed["configs/isic2017.py:runlocal"].startswith("CPU-sized")


def _in_main(setup: str, expression: str, *args: str):
  """``expression``'s JSON value after ``setup``, in a fresh interpreter with
  ``rapool_jax.main`` imported as ``main_lib`` (its flags would clash with
  predict's in this process); ``args`` are ``sys.argv[1:]``."""
  code = ("import json, pathlib, sys; from rapool_jax import main as main_lib; "
          f"{setup or 'pass'}; print(json.dumps({expression}))")
  proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  return json.loads(proc.stdout)


def test_a_new_variant_in_a_docstring_is_listed():
  doc = """Title line.

Variants (``--config configs/x.py:NAME``):
  small      a few steps, for a laptop. More
             words that continue it.
  big,fast   both at once (at 224 px, batch 256); for an accelerator.
Not a variant  any more.
"""
  assert _in_main("", "main_lib.docstring_variants(sys.argv[1])", doc) == [
      ["small", "a few steps"],
      ["big,fast", "both at once (at 224 px, batch 256)"]]


def test_a_broken_config_file_is_listed_not_fatal(tmp_path):
  (tmp_path / "good.py").write_text('"""Good one.\n\nVariants:\n  a  the a."""\n')
  (tmp_path / "broken.py").write_text("def get_config(:\n")
  rows = dict(_in_main("main_lib.CONFIG_DIRS = (pathlib.Path(sys.argv[1]),)",
                       "main_lib.config_catalogue()", str(tmp_path)))
  assert rows["configs/good.py"] == "Good one."
  assert rows["configs/good.py:a"] == "the a"
  assert rows["configs/broken.py"].startswith("(unreadable: SyntaxError")
