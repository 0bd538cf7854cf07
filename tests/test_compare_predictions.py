"""launch/compare_predictions.py on small synthetic CSVs: numbers and errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from conftest import REPO

if str(REPO) not in sys.path:  # `launch` is a folder of scripts, not installed
  sys.path.insert(0, str(REPO))

from launch import compare_predictions  # noqa: E402
from rapool_jax import stats  # noqa: E402

N = 60


def _write(path, header, rows):
  with open(path, "w") as f:
    f.write(",".join(header) + "\n")
    for r in rows:
      f.write(",".join(str(v) for v in r) + "\n")
  return str(path)


@pytest.fixture
def problem(tmp_path):
  """Official-style labels, three models' prediction CSVs (two seeds of c)."""
  rng = np.random.default_rng(0)
  ids = [f"ISIC_{i:07d}" for i in range(N)]
  labels = (rng.random(N) < 0.3).astype(int)
  labels[:2] = [0, 1]
  # The official Part 3 ground truth: image_id, 0.0/1.0 floats, an SK column.
  lab = _write(tmp_path / "truth.csv",
               ["image_id", "melanoma", "seborrheic_keratosis"],
               [(i, float(y), 0.0) for i, y in zip(ids, labels)])
  scores, paths = {}, {}
  for name, shift in (("a", 1.2), ("b", 0.4), ("c0", 0.8), ("c1", 0.8)):
    s = 1 / (1 + np.exp(-(labels * shift + rng.normal(size=N))))
    order = rng.permutation(N)  # row order must not matter
    paths[name] = _write(tmp_path / f"{name}.csv", ["image", "melanoma"],
                         [(ids[k], repr(float(s[k]))) for k in order])
    scores[name] = s
  return tmp_path, ids, labels, lab, scores, paths


def test_numbers_match_the_statistics_and_sklearn(problem, capsys):
  tmp, _, labels, lab, scores, paths = problem
  out_json = str(tmp / "out.json")
  assert compare_predictions.main(
      ["--labels", lab, paths["a"], paths["b"],
       f"c={paths['c0']},{paths['c1']}", "--json", out_json,
       "--n-resamples", "300"]) == 0
  printed = capsys.readouterr().out
  result = json.load(open(out_json))
  assert (result["num_images"], result["num_positives"]) == (N, labels.sum())
  c = (scores["c0"] + scores["c1"]) / 2  # seeds averaged per image
  want = {"a": scores["a"], "b": scores["b"], "c": c}
  assert [m["name"] for m in result["models"]] == ["a", "b", "c"]
  for m in result["models"]:
    assert m["auc"] == pytest.approx(roc_auc_score(labels, want[m["name"]]), abs=1e-12)
    assert (m["lo"], m["hi"]) == pytest.approx(
        (stats.auc_ci(labels, want[m["name"]])["lo"],
         stats.auc_ci(labels, want[m["name"]])["hi"]))
    assert f"| {m['name']} | {len(m['files'])} | {m['auc']:.3f} " in printed
  assert [(p["a"], p["b"]) for p in result["comparisons"]] == [
      ("a", "b"), ("a", "c"), ("b", "c")]
  for p in result["comparisons"]:
    dl = stats.paired_delong(labels, want[p["a"]], want[p["b"]])
    boot = stats.paired_bootstrap_auc_diff(labels, want[p["a"]], want[p["b"]],
                                           n_resamples=300, seed=0)
    assert p["diff"] == pytest.approx(roc_auc_score(labels, want[p["a"]])
                                      - roc_auc_score(labels, want[p["b"]]), abs=1e-12)
    assert (p["se"], p["p"]) == pytest.approx((dl["se"], dl["p"]), rel=1e-12)
    assert (p["boot_lo"], p["boot_hi"]) == (boot["lo"], boot["hi"])
    assert f"| {p['a']} - {p['b']} | {p['diff']:+.3f} |" in printed


def test_plain_labels_csv_from_the_command_line(problem):
  tmp, ids, labels, _, _, paths = problem
  lab = _write(tmp / "labels.csv", ["image", "melanoma"],
               [(i, y) for i, y in zip(ids, labels)])
  proc = subprocess.run(
      [sys.executable, "-m", "launch.compare_predictions", "--labels", lab,
       paths["a"], paths["b"], "--n-resamples", "200"],
      cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  assert f"{N} images, {labels.sum()} with melanoma=1" in proc.stdout
  assert "| a - b |" in proc.stdout


def _error(capsys, argv):
  with pytest.raises(SystemExit) as e:
    compare_predictions.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  return err


def test_image_sets_that_differ_are_one_line_naming_file_and_ids(problem, capsys):
  tmp, ids, _, lab, _, paths = problem
  rows = [(i, 0.5) for i in ids[3:]] + [("ISIC_9999999", 0.5)]
  bad = _write(tmp / "bad.csv", ["image", "melanoma"], rows)
  err = _error(capsys, ["--labels", lab, paths["a"], bad])
  assert err == (f"error: UserError: {bad}: missing 3 image(s) of {lab} "
                 f"({ids[0]}, {ids[1]}, {ids[2]}); 1 image(s) not in {lab} "
                 "(ISIC_9999999)")


@pytest.mark.parametrize("case, needle", [
    ("no_column", "needs the columns image (or image_id) and melanoma, has image, score"),
    ("not_number", "image ISIC_0000000: melanoma='abc' is not a finite number"),
    ("duplicate", "line 3: image ISIC_0000000 appears twice"),
    ("missing_file", "no such file"),
])
def test_bad_prediction_csv_is_one_line_naming_it(problem, capsys, case, needle):
  tmp, ids, _, lab, _, paths = problem
  path = str(tmp / "p.csv")
  if case == "no_column":
    _write(path, ["image", "score"], [(i, 0.5) for i in ids])
  elif case == "not_number":
    _write(path, ["image", "melanoma"], [(ids[0], "abc")] + [(i, 0.5) for i in ids[1:]])
  elif case == "duplicate":
    _write(path, ["image", "melanoma"], [(ids[0], 0.5)] + [(i, 0.5) for i in ids])
  err = _error(capsys, ["--labels", lab, paths["a"], path])
  assert err.startswith(f"error: UserError: {path}: ") and needle in err


def test_bad_labels_are_one_line_naming_the_file(problem, capsys):
  tmp, ids, _, _, _, paths = problem
  lab = _write(tmp / "l.csv", ["image", "melanoma"], [(i, 2) for i in ids])
  err = _error(capsys, ["--labels", lab, paths["a"]])
  assert f"{lab}: melanoma must be 0 or 1, got ISIC_0000000=2" in err
  lab = _write(tmp / "l.csv", ["image", "melanoma"],
               [(i, int(k == 0)) for k, i in enumerate(ids)])
  err = _error(capsys, ["--labels", lab, paths["a"]])
  assert f"{lab}: 1 image(s) with melanoma=1 and {N - 1} with 0" in err


def test_model_names_from_stems_or_paths():
  assert compare_predictions.parse_models(["x/a.csv", "n=y/b.csv,y/c.csv"]) == [
      ("a", ["x/a.csv"]), ("n", ["y/b.csv", "y/c.csv"])]
  # Same stem in two folders: the paths name them.
  assert compare_predictions.parse_models(["x/a.csv", "y/a.csv"]) == [
      ("x/a.csv", ["x/a.csv"]), ("y/a.csv", ["y/a.csv"])]
  with pytest.raises(ValueError, match="a name used once"):
    compare_predictions.parse_models(["m=a.csv", "m=b.csv"])


def test_a_runs_own_prediction_csvs_serve_as_labels_and_scores(problem,
                                                                 capsys):
  """WORKDIR/predictions/SPLIT/STAGE.csv (image,label,score): one CSV is the
  labels, each is a model, with --column label --score-column score."""
  tmp, ids, labels, _, scores, _ = problem
  runs = {name: _write(tmp / f"run_{name}.csv", ["image", "label", "score"],
                       [(i, str(int(y)), repr(float(s)))
                        for i, y, s in zip(ids, labels, scores[name])])
          for name in ("a", "b")}
  assert compare_predictions.main(
      ["--labels", runs["a"], "--column", "label", "--score-column", "score",
       f"a={runs['a']}", f"b={runs['b']}", "--n-resamples", "50"]) == 0
  printed = capsys.readouterr().out
  diff = roc_auc_score(labels, scores["a"]) - roc_auc_score(labels, scores["b"])
  assert f"| a - b | {diff:+.3f} |" in printed
  with pytest.raises(SystemExit):  # a model CSV without the score column
    compare_predictions.main(["--labels", runs["a"], "--column", "label",
                              f"a={runs['a']}"])
