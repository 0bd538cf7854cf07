"""The robustness folder: tables from its CSVs, and --check catching tampering."""

import os

import numpy as np
import pandas as pd
import pytest

from rapool_jax.analysis import robustness as rb
from rapool_jax.analysis import robustness_report as report


def synthetic_folder(root, n=160, seed=0):
  """CSVs as launch/robustness.py writes them, on made-up images: RAP is
  better than the control on images with a ruler only."""
  rng = np.random.default_rng(seed)
  ids = [f"ISIC_{i:07d}" for i in range(n)]
  label = (rng.random(n) < 0.3).astype(int)
  fold = np.arange(n) % 2
  ruler = rng.random(n) < 0.5
  base = label + rng.normal(0, 1, n)
  rap = base + ruler * label * 1.5 + rng.normal(0, 0.3, n)
  control = base + rng.normal(0, 0.3, n)
  flags = pd.DataFrame({"image_id": ids[:-10], "split": "train",
                        **{f: 0 for f in rb.FLAGS}})
  flags["ruler"] = ruler[:-10].astype(int)   # the last 10: unannotated
  flags.to_csv(root / "artefacts.csv", index=False)
  strata = pd.concat([pd.DataFrame({"split": s, "image": ids, "fold": fold * (s == "oof"),
                                    "label": label, "models": 2, "RAP": rap,
                                    "GAP control": control}) for s in ("oof", "test")])
  strata.to_csv(root / "strata_scores.csv", index=False)
  versions = []
  for version in ("whole", "background_only"):
    for s in (0, 1):
      noise = rng.normal(0, 0.1, n)
      versions.append(pd.DataFrame({
          "image": ids, "label": label, "fold": fold, "seed": s, "version": version,
          "RAP": rap + noise, "GAP control": control + noise,
          "cam RAP": rng.uniform(0.5, 1, n), "cam GAP control": rng.uniform(0, 1, n)}))
  pd.concat(versions).to_csv(root / "versions.csv", index=False)
  trap = [pd.DataFrame({"image": ids, "label": label, "fold": 0, "seed": s, "bias": b,
                        "RAP": base + rng.normal(0, 0.2, n),
                        "GAP control": base - b * label + rng.normal(0, 0.2, n),
                        "clean RAP": base + rng.normal(0, 0.2, n),
                        "clean GAP control": base + rng.normal(0, 0.2, n)})
          for b in (0.0, 0.9) for s in (0, 1)]
  pd.concat(trap).to_csv(root / "trap.csv", index=False)
  runs = pd.DataFrame({"fold": [0, 1], "seed": 0, "depth": "18", "width": 0.25,
                       "crop px": 112, "Step-4 steps": 250,
                       "Jaccard RAP": [0.6, 0.7], "masked images": 80})
  runs.to_csv(root / "runs.csv", index=False)
  # Recipe 2: the same test images, RAP better than the control everywhere
  # (no interaction), its versions on fewer images.
  sub = root / report.RECIPE2
  sub.mkdir()
  rap2 = base + label * 1.0 + rng.normal(0, 0.3, n)
  pd.DataFrame({"split": "test", "image": ids, "fold": 0, "label": label,
                "models": 3, "RAP": rap2, "GAP control": control}).to_csv(
      sub / "strata_scores.csv", index=False)
  v = pd.read_csv(root / "versions.csv").query("fold == 0")
  v.assign(fold=0).to_csv(sub / "versions.csv", index=False)
  runs.assign(fold=0, seed=[0, 1], width=0.5, **{"crop px": 128,
                                                  "Step-4 steps": 800}).to_csv(
      sub / "runs.csv", index=False)
  return str(root / "artefacts.csv")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("robustness")
  artefacts = synthetic_folder(root)
  results = report.write(str(root), artefacts)
  return root, artefacts, results


def test_tables_find_the_planted_interaction(folder):
  _, _, results = folder
  rows = {r["stratum"]: r for r in results["strata_oof"]["rows"]}
  assert results["strata_oof"]["unannotated"] == 10
  assert rows["ruler"]["interaction"] > 0.05 and rows["ruler"]["lo"] > 0
  assert rows["ruler"]["p Holm"] >= rows["ruler"]["p"]
  trap = {r["bias"]: r for r in results["trap"]}
  assert trap[0.9]["diff"] > trap[0.0]["diff"]
  assert results["cam"]["share"]["diff"] > 0.2
  for name in ("strata.png", "versions.png", "trap.png", "results.md"):
    assert os.path.getsize(os.path.join(root_of(folder), name)) > 0


def test_recipes_side_by_side_and_their_paired_difference(folder):
  root, _, results = folder
  one, two = results["recipes"]["rows"]
  assert (one["width"], two["width"], two["Step-4 steps"]) == (0.25, 0.5, 800)
  assert one["Jaccard RAP"] == pytest.approx(0.65)
  assert "interaction" in one and "strata_oof" not in results["recipes"]
  d = results["recipes"]["difference"]
  assert d["diff"] == pytest.approx(two["interaction"] - one["interaction"])
  # Recipe 1 has the planted ruler interaction, recipe 2 none.
  assert d["hi"] < 0
  sub = root / report.RECIPE2
  assert "strata_oof" not in report.analyse(str(sub), str(root / "artefacts.csv"))
  assert (sub / "results.md").read_text().startswith(
      "# Where region pooling matters: RAP - GAP control by artefact, image "
      "version and CAM energy (recipe 2")
  assert os.path.getsize(sub / "strata.png") > 0


def test_recipe_difference_of_a_recipe_with_itself_is_exactly_zero(folder):
  root, artefacts, _ = folder
  test = pd.read_csv(root / "strata_scores.csv").query("split == 'test'")
  test = test.set_index("image")
  flags = rb.read_artefacts(artefacts)
  d = rb.recipe_difference(test, test, flags, "RAP", "GAP control")
  assert d["diff"] == d["lo"] == d["hi"] == 0
  with pytest.raises(Exception, match="different images"):
    rb.recipe_difference(test, test.iloc[1:], flags, "RAP", "GAP control")


def root_of(folder):
  return str(folder[0])


def test_check_passes_then_catches_a_tampered_table(folder, tmp_path, capsys):
  root, artefacts, _ = folder
  assert report.check(str(root), artefacts) == 0
  copy_folder(root, tmp_path)
  md = (tmp_path / "results.md").read_text()
  line = next(l for l in md.splitlines() if l.startswith("| ruler"))
  cells = line.split("|")
  cells[7] = " +0.999 "   # an altered interaction
  (tmp_path / "results.md").write_text(md.replace(line, "|".join(cells)))
  assert report.check(str(tmp_path), artefacts) == 1
  assert "results.md line" in capsys.readouterr().out


def copy_folder(root, to):
  for path in root.rglob("*"):
    if path.is_file():
      (to / path.relative_to(root)).parent.mkdir(exist_ok=True)
      (to / path.relative_to(root)).write_bytes(path.read_bytes())


def test_check_catches_a_tampered_recipe2_csv(folder, tmp_path, capsys):
  root, artefacts, _ = folder
  copy_folder(root, tmp_path)
  sub = tmp_path / report.RECIPE2
  scores = pd.read_csv(sub / "strata_scores.csv")
  scores.loc[scores.label == 1, "GAP control"] += 3.0
  scores.to_csv(sub / "strata_scores.csv", index=False)
  assert report.check(str(tmp_path), artefacts) == 1
  out = capsys.readouterr().out
  assert f"{report.RECIPE2}: differs from its CSVs: strata_test" in out
  assert "differs from its CSVs: recipes" in out


def test_check_catches_a_tampered_csv(folder, tmp_path, capsys):
  root, artefacts, _ = folder
  copy_folder(root, tmp_path)
  trap = pd.read_csv(tmp_path / "trap.csv")
  trap.loc[3, "RAP"] += 5.0
  trap.to_csv(tmp_path / "trap.csv", index=False)
  assert report.check(str(tmp_path), artefacts) == 1
  assert "trap" in capsys.readouterr().out


def test_artefacts_csv_errors_are_one_line(tmp_path):
  from rapool_jax import errors
  pd.DataFrame({"image_id": ["a"], "ruler": [1]}).to_csv(tmp_path / "x.csv", index=False)
  with pytest.raises(errors.UserError, match="x.csv: missing column"):
    rb.read_artefacts(str(tmp_path / "x.csv"))
  pd.DataFrame({"image_id": ["zz"], **{f: [0] for f in rb.FLAGS}}).to_csv(
      tmp_path / "y.csv", index=False)
  with pytest.raises(errors.UserError, match="1 image id.*not in the scored images, e.g. zz"):
    rb.read_artefacts(str(tmp_path / "y.csv"), known_ids=["a"])
  # With a split, only that split's rows must be scored (a partial CV).
  pd.DataFrame({"image_id": ["a", "zz"], "split": ["test", "train"],
                **{f: [0, 0] for f in rb.FLAGS}}).to_csv(tmp_path / "z.csv", index=False)
  assert len(rb.read_artefacts(str(tmp_path / "z.csv"), ["a"], split="test")) == 2
  with pytest.raises(errors.UserError, match="e.g. a"):
    rb.read_artefacts(str(tmp_path / "z.csv"), ["b"], split="test")
