"""The README keeps its shape: at most 250 lines, a quick start of exactly two
commands, a paper-to-code map that names files and functions that exist, and
links (to docs/results.md and the results folders) that resolve."""

import ast
import re

from conftest import REPO

README = REPO / "README.md"
RESULTS_DOC = REPO / "docs" / "results.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _defined_names(path):
  tree = ast.parse(path.read_text())
  return {n.name for n in ast.walk(tree)
          if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def _section(text: str, heading: str) -> str:
  """From ``## heading`` to the next ``## `` heading (or the end)."""
  start = text.index(f"## {heading}")
  end = text.find("\n## ", start + 3)
  return text[start:] if end == -1 else text[start:end]


def _anchors(path) -> set[str]:
  """GitHub's anchors for the headings of a markdown file."""
  out = set()
  for line in path.read_text().splitlines():
    if m := re.match(r"#+ (.*)", line):
      slug = re.sub(r"[^\w\- ]", "", m[1].strip().lower())
      out.add(slug.replace(" ", "-"))
  return out


def test_the_readme_fits_its_budget():
  lines = README.read_text().splitlines()
  assert len(lines) <= 250, len(lines)


def test_the_quick_start_is_two_commands_run_and_test():
  section = _section(README.read_text(), "Quick start")
  blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
  assert len(blocks) == 1, blocks
  commands = [line for line in blocks[0].splitlines() if line.strip()]
  assert len(commands) == 2, commands
  run, test = commands
  assert "rapool_jax.main --config configs/default.py" in run, run
  assert "pytest" in test, test


def test_every_equation_and_step_points_at_a_real_function():
  table = _section(README.read_text(), "The paper in the code")
  rows = [line for line in table.splitlines()
          if line.startswith("| ") and not line.startswith("| paper")]
  covered = set()
  for row in rows:
    for lo, hi in re.findall(r"Eq\. (\d+)(?:-(\d+))?", row.split("|")[1]):
      covered |= set(range(int(lo), int(hi or lo) + 1))
  assert covered >= set(range(1, 12)), sorted(set(range(1, 12)) - covered)
  assert any("Step 1" in r for r in rows) and any("Steps 2-4" in r for r in rows)
  refs = re.findall(r"`((?:rapool_jax/)?[\w/]+\.py):([\w.]+)`", table)
  assert len(refs) >= 12
  for file, name in refs:
    path = REPO / (file if file.startswith("rapool_jax/") else
                   f"rapool_jax/{file}")
    assert path.is_file(), file
    assert name.split(".")[0] in _defined_names(path), f"{file}:{name}"


def test_the_links_of_the_readme_and_the_results_page_resolve():
  for doc in (README, RESULTS_DOC):
    for target in LINK.findall(doc.read_text()):
      if target.startswith(("http://", "https://")):
        continue
      file, _, anchor = target.partition("#")
      path = (doc.parent / file).resolve() if file else doc
      assert path.exists(), f"{doc.name}: {target}"
      if anchor:
        assert anchor in _anchors(path), f"{doc.name}: {target}"


def test_the_results_page_names_every_results_folder():
  text = RESULTS_DOC.read_text()
  for folder in sorted(p for p in (REPO / "results").iterdir() if p.is_dir()):
    assert f"results/{folder.name}/" in text or f"`{folder.name}/`" in text, (
        folder.name)
