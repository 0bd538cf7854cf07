"""The project's shape: line counts, the longest functions and classes, and
imports that point up the layers (or go round in a circle).

    python scripts/code_shape.py            # report
    python scripts/code_shape.py --check    # exit 1 on a problem

Checked in ``rapool_jax/``, ``launch/`` and ``benchmarks/``: no function over
50 lines, no class over 100, no import inside a function unless listed here
with its reason, no import circle. Inside ``rapool_jax`` a module imports only
from its own layer or below, and never from ``launch`` or ``benchmarks``;
those two import from ``rapool_jax`` and themselves, not from each other.
Line counts are printed, not limited: issue 35's goal is at most 11,000
lines outside ``tests/`` (``launch/`` 1,500, ``benchmarks/`` 2,500).
``tests/test_code_shape.py`` runs the check.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("rapool_jax", "launch", "benchmarks")
# Counted with the packages in "outside tests/" (configs/, scripts/).
OTHER_CODE = ("configs", "scripts")
# Issue 35's goals, printed beside the counts (a report, not a check).
LINE_GOALS = {"launch": 1500, "benchmarks": 2500, "outside tests/": 11000}
MAX_FUNCTION_LINES = 50
MAX_CLASS_LINES = 100
# Imports inside a function, and why (never to dodge a cycle). A key is the
# importing module, or the imported package wherever it is imported.
LAZY_IMPORTS_ALLOWED = {
    "rapool_jax.main": "--help and flag errors answer before JAX, flax and "
                       "TFDS load",
    "rapool_jax.predict": "--help and flag errors answer before JAX, flax and "
                          "TFDS load",
    "rapool_jax.xla_flags": "jax._src is private: asked, inside a try, only "
                            "whether a backend has started",
    "rapool_jax.sharding": "multihost_utils and grain serve only a "
                           "multi-process gather and the host stream",
    "launch.compare_classifiers": "rapool_jax.predict defines absl flags "
                                  "that clash with main's",
    "benchmarks.torch_reference": "imports torch, which is optional",
    "benchmarks.runners": "jaxlib's cost analysis on the CPU client is "
                          "private: tried only where a backend cannot count",
    "torch": "optional: only the PyTorch reference and .pt weights need it",
    "matplotlib": "only a figure needs it (and its backend is chosen first)",
}

# Module of rapool_jax (dotted, without the package) -> layer. Lower numbers
# are imported by higher ones, never the other way round.
LAYERS = (
    ("errors", "config_files", "config_lib", "xla_flags", "distributed",
     "provenance", "weight_files"),
    ("data", "data.pipeline", "data.folds", "data.isic2017",
     "data.synthetic_derm", "data.trap", "disrupt", "sharding"),
    ("models", "models.resnet", "models.vgg", "models.dropout",
     "models.rapool_net", "pooling"),
    ("pretrained",),
    ("losses", "optim", "metrics", "stats", "rankopt", "linear_baselines",
     "analysis",
     "checkpoint", "checks", "progress"),
    ("train",),
    ("population",),
    ("evaluate",),
    ("report",),
    ("analysis.frames", "analysis.tables", "analysis.recompute",
     "analysis.paired", "analysis.power", "analysis.prediction_csvs",
     "analysis.run_tables", "analysis.run_dirs", "analysis.near_copies",
     "analysis.design",
     "analysis.runs"),
    ("analysis.crossval", "analysis.crossval_text", "analysis.testsplit",
     "analysis.commands", "analysis.robustness", "analysis.sweeps",
     "analysis.classifiers"),
    ("analysis.robustness_report",),
    ("run",),
    ("run_population",),
    ("main", "predict"),
)


def layer_of(module: str) -> int | None:
  for i, names in enumerate(LAYERS):
    if module in names:
      return i
  return None


def modules(package: str = "rapool_jax") -> dict[str, pathlib.Path]:
  """``{dotted name inside the package: path}``."""
  out = {}
  root = REPO / package
  for path in sorted(root.rglob("*.py")):
    rel = path.relative_to(root).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    out[".".join(parts)] = path
  return out


def line_counts() -> dict[str, int]:
  """Lines of each package, and of everything outside ``tests/``."""
  count = lambda root: sum(len(p.read_text().splitlines())  # noqa: E731
                           for p in (REPO / root).rglob("*.py"))
  out = {name: count(name) for name in PACKAGES}
  out["outside tests/"] = sum(out.values()) + sum(map(count, OTHER_CODE))
  return out


def imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
  """``(imported module, line, at top level)`` of every import; ``from p
  import m`` names ``p.m`` (a module or not, resolved by the caller)."""
  found = []
  top = {id(n) for n in getattr(tree, "body", [])}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [f"{node.module}.{a.name}" for a in node.names]
    elif isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    else:
      continue
    found += [(name, node.lineno, id(node) in top) for name in names]
  return found


def project_module(name: str, known: dict[str, set[str]]) -> tuple[str, str] | None:
  """``(package, module)`` that the dotted import ``name`` reaches, or None
  outside the project: ``rapool_jax.data.pipeline`` -> ``("rapool_jax",
  "data.pipeline")``, ``rapool_jax.stats.auc`` -> ``("rapool_jax", "stats")``."""
  package, _, rest = name.partition(".")
  if package not in known:
    return None
  while rest and rest not in known[package]:
    rest = rest.rpartition(".")[0]
  return package, rest


def long_definitions(tree: ast.AST):
  """``(kind, name, line, length)`` of every function and class."""
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield "function", node.name, node.lineno, node.end_lineno - node.lineno + 1
    elif isinstance(node, ast.ClassDef):
      yield "class", node.name, node.lineno, node.end_lineno - node.lineno + 1


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def import_problems(package: str, module: str, where: str, tree,
                    known: dict[str, set[str]], graph: dict) -> list[str]:
  """The imports of one module that break the rules above."""
  found = []
  for name, line, at_top in imports(tree):
    target = project_module(name, known)
    parts = name.split(".")
    lazy_ok = f"{package}.{module}" in LAZY_IMPORTS_ALLOWED or any(
        ".".join(parts[:i]) in LAZY_IMPORTS_ALLOWED
        for i in range(1, len(parts) + 1))
    if not at_top and not lazy_ok:
      found.append(f"{where}:{line} imports {name} inside a function")
    if target is None or target == (package, module) or not target[1]:
      continue
    there_package, there = target
    if there_package != package:
      if package == "rapool_jax" or there_package != "rapool_jax":
        found.append(f"{where}:{line} imports {name}: {package}/ may import "
                     f"only from itself{'' if package == 'rapool_jax' else ' and rapool_jax'}")
      continue
    graph.setdefault(module, set()).add(there)
    if package != "rapool_jax":
      continue
    here_layer, there_layer = layer_of(module), layer_of(there)
    if here_layer is None or there_layer is None:
      found.append(f"{where}:{line} imports {name}: a module in no layer "
                   f"of scripts/code_shape.py "
                   f"({module if here_layer is None else there})")
    elif there_layer > here_layer:
      found.append(f"{where}:{line} imports {name}, a higher layer")
  return found


def problems() -> tuple[list[str], dict]:
  """Every breach of the limits, and the figures behind them."""
  found, longest = [], []
  known = {package: set(modules(package)) for package in PACKAGES}
  for package in PACKAGES:
    graph = {}
    for module, path in modules(package).items():
      where = str(path.relative_to(REPO))
      tree = ast.parse(path.read_text())
      for kind, name, line, length in long_definitions(tree):
        longest.append((length, kind, f"{where}:{line} {name}"))
        limit = MAX_FUNCTION_LINES if kind == "function" else MAX_CLASS_LINES
        if length > limit:
          found.append(f"{kind} {name} ({where}:{line}) has {length} lines "
                       f"(at most {limit})")
      found += import_problems(package, module, where, tree, known, graph)
    cycle = find_cycle(graph)
    if cycle:
      found.append(f"import circle in {package}: " + " -> ".join(cycle))
  return found, {"lines": line_counts(),
                 "longest": sorted(longest, reverse=True)[:8]}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--check", action="store_true")
  args = parser.parse_args()
  found, figures = problems()
  for part, lines in figures["lines"].items():
    goal = LINE_GOALS.get(part)
    print(f"{part + ':':16s}{lines:6d} lines"
          + (f"  (goal: at most {goal:,})" if goal else ""))
  print("longest:")
  for length, kind, where in figures["longest"]:
    print(f"  {length:4d} lines  {kind:8s} {where}")
  for line in found:
    print("  PROBLEM", line)
  return 1 if (args.check and found) else 0


if __name__ == "__main__":
  sys.exit(main())
