"""The test-split table of the ``configs/isic2017.py:testsplit`` seeds.

    python launch/testsplit_report.py RUN_DIR [RUN_DIR ...] --out OUT
        [--expected-seeds 0,1,2,3,4]
        [--exclude-images FILE | --near-copies-from RUN_DIR [--data-root DIR]]
    python launch/testsplit_report.py --rebuild OUT
    python launch/testsplit_report.py --check OUT

Each RUN_DIR is one seed (``--config.seed=S``) trained on the official
training split; its per-image predictions on the test split (600 images) and
on the validation split (where thresholds are set) go to OUT:

* ``test_scores.csv`` and ``val_scores.csv``: ``image,label,seed``, then one
  score column per arm; one row per image and seed;
* ``runs.csv``: ``seed,finished``, every seed meant to run;
* ``test_near_copies.csv`` (with ``--exclude-images``, or found by
  ``folds.near_copies`` on a run's data with ``--near-copies-from``): test
  images with a near-copy in train + validation (``image[,reference]``);
  every verdict is given with and without them;
* ``results.json`` and ``results.md``: per arm the test AUC of each seed
  (mean ± SD) and of the seed-averaged per-image score with its DeLong CI;
  paired differences on the seed-averaged scores (DeLong and bootstrap);
  sensitivities at thresholds from the seed-averaged validation scores,
  compared only at matched specificity.

``--check OUT`` recomputes every figure of results.json and results.md from
the CSVs and fails, naming what differs (see ``launch/crossval_report.py``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch import crossval_report as cv  # noqa: E402
from rapool_jax import metrics  # noqa: E402
from rapool_jax import stats  # noqa: E402

KEYS = ("image", "label", "seed")
# (name, arm a, arm b, question), the primary first.
COMPARISONS = (
    ("RAP vs GAP control (primary)", "rap_lambda_7.5", cv.CONTROL,
     "Does region pooling beat GAP trained as long?"),
    ("RAP vs GAP + seg loss", "rap_lambda_7.5", "gap_seg_loss_lambda_7.5",
     "Is the gain the pooling, given the same segmentation loss?"),
    ("RankOpt vs RAP softmax", "rap_rankopt", "rap_lambda_7.5",
     "Does RankOpt raise AUC on the same features?"),
    ("GAP control vs Step 2", cv.CONTROL, "step_2_gap",
     "What do the extra steps alone give?"),
    ("RankOpt vs logistic regression", "rap_rankopt",
     "rap_logistic_regression", "RankOpt against a plain linear baseline"),
)


def collect(run_dirs) -> dict:
  """Rows of ``test`` and ``val`` (one per image and seed), and the arms."""
  tables, arms = collections.defaultdict(list), None
  for run in sorted(run_dirs):
    config = cv.run_config(run)
    if arms is None:
      arms = cv.run_arms(run)
    elif cv.run_arms(run) != arms:
      raise ValueError(f"{run}: arms {cv.run_arms(run)} differ from {arms}")
    key = {"seed": config["seed"]}
    tables["test"] += cv.score_rows(run, config["data"]["eval_split"], arms,
                                    key)
    tables["val"] += cv.score_rows(run, config["data"]["val_split"], arms, key)
  return {**tables, "arms": arms}


def write_report(run_dirs, out: str, expected_seeds=(),
                 exclude_images="") -> dict:
  """Collects RUN_DIRS' predictions into OUT's CSVs, then the tables;
  ``exclude_images`` as ``crossval_report.write_report``'s."""
  os.makedirs(out, exist_ok=True)
  tables = collect(run_dirs)
  columns = KEYS + tuple(tables["arms"])
  p = lambda name: os.path.join(out, name)  # noqa: E731
  cv.write_csv(p("test_scores.csv"), tables["test"], columns)
  cv.write_csv(p("val_scores.csv"), tables["val"], columns)
  finished = {r["seed"] for r in tables["test"]}
  cv.write_csv(p("runs.csv"), [
      {"seed": s, "finished": int(s in finished)}
      for s in sorted(set(expected_seeds) | finished)], ("seed", "finished"))
  cv.write_near_copies(out, exclude_images)
  return cv.write_tables(out, compute_all, markdown)


def read_tables(out: str) -> dict:
  p = lambda name: os.path.join(out, name)  # noqa: E731
  t = {n: cv.score_columns(cv.load_csv(p(f"{n}_scores.csv")), KEYS,
                           p(f"{n}_scores.csv")) for n in ("test", "val")}
  t["runs"] = [{k: int(v) for k, v in r.items()}
               for r in cv.load_csv(p("runs.csv"))]
  t["arms"] = cv.arms_of(t["test"], KEYS)
  t["near_copies"] = (cv.read_image_list(p("test_near_copies.csv"))
                      if os.path.exists(p("test_near_copies.csv")) else None)
  return t


def validate(t: dict) -> list[str]:
  """Each image scored once per seed, by every finished seed, one arm set."""
  problems = []
  finished = {r["seed"] for r in t["runs"] if r["finished"]}
  for n in ("test", "val"):
    name, c = f"{n}_scores.csv", t[n]
    if cv.arms_of(c, KEYS) != t["arms"]:
      problems.append(f"{name}: arms {cv.arms_of(c, KEYS)} differ from "
                      f"test_scores.csv's {t['arms']}")
    problems += cv.duplicates(c, ("image", "seed"), name)
    problems += cv.same_images_per_group(
        {**c, "all": np.zeros(len(c["image"]), int)}, ("all", "seed"), name)
    scored = set(c["seed"].tolist())
    problems += [f"{name}: seed {s} "
                 + ("has rows but runs.csv does not list it as finished"
                    if s in scored else "is finished in runs.csv but has no "
                    "rows") for s in sorted(scored ^ finished)]
  if t["near_copies"] is not None:
    problems += [f"test_near_copies.csv: {i} is not a test image"
                 for i in sorted(set(t["near_copies"])
                                 - set(t["test"]["image"]))]
  return problems


def arm_rows(t, m, v, keep) -> list[dict]:
  """Per arm: test AUC per seed, seed-averaged test AUC [CI] with and
  without near-copies, validation AUC, operating points at the validation
  thresholds."""
  test, y = t["test"], m["label"]
  seeds = sorted(set(test["seed"].tolist()))
  rows = []
  for a in t["arms"]:
    per_seed = [metrics.roc_auc(test["label"][test["seed"] == s],
                                test[a][test["seed"] == s]) for s in seeds]
    row = {"arm": a, "auc_per_seed": per_seed,
           "auc_seed_mean_sd": cv.mean_sd(per_seed), **stats.auc_ci(y, m[a]),
           "without_near_copies": (stats.auc_ci(y[keep], m[a][keep])
                                   if not keep.all() else None),
           "validation_auc": metrics.roc_auc(v["label"], v[a])}
    for spe in cv.SPECIFICITIES:
      thr = metrics.threshold_at_specificity(v["label"], v[a], spe)
      pred = m[a] >= thr
      row[f"at_spe{spe}"] = {"threshold": thr,
                             "sensitivity": float(pred[y == 1].mean()),
                             "specificity": float(1 - pred[y == 0].mean())}
    rows.append(row)
  return rows


def sensitivities(arms, m, v) -> tuple[list[dict], list[dict]]:
  """(at the validation thresholds, at the test ROC point) per comparison
  and target specificity, on the seed-averaged scores."""
  y = m["label"]
  at_val, at_roc = [], []
  for name, a, b in cv.SENSITIVITY_COMPARISONS:
    if a in arms and b in arms:
      for spe in cv.SPECIFICITIES:
        thr = [metrics.threshold_at_specificity(v["label"], v[x], spe)
               for x in (a, b)]
        key = {"name": name, "a": a, "b": b, "specificity": spe}
        at_val.append({**key, **cv.matched_sensitivity(y, m[a], m[b], *thr)})
        thr = [metrics.threshold_at_specificity(y, m[x], spe) for x in (a, b)]
        at_roc.append({**key, **cv.matched_sensitivity(y, m[a], m[b], *thr)})
  return at_val, at_roc


def compute_all(out: str) -> dict:
  """Every figure of results.json from OUT's CSVs (ValueError on bad CSVs)."""
  t = read_tables(out)
  problems = validate(t)
  if problems:
    raise ValueError("; ".join(problems))
  arms = t["arms"]
  m = cv.average_over(t["test"], arms, "image", ())
  v = cv.average_over(t["val"], arms, "image", ())
  keep = ~np.isin(m["image"], sorted(t["near_copies"] or ()))
  y = m["label"]
  at_val, at_roc = sensitivities(arms, m, v)
  missing = [r["seed"] for r in t["runs"] if not r["finished"]]
  results = {
      "arms": arms, "match_tolerance": cv.MATCH_TOLERANCE,
      "runs": {"expected": len(t["runs"]), "finished": len(t["runs"])
               - len(missing), "missing": missing},
      "seeds": sorted(set(t["test"]["seed"].tolist())),
      "num_images": int(len(y)), "num_melanomas": int(y.sum()),
      "num_validation_images": int(len(v["label"])),
      "near_copies": int((~keep).sum()),
      "near_copy_melanomas": int(y[~keep].sum()),
      "arm_rows": arm_rows(t, m, v, keep),
      "comparisons": [
          {"name": name, "a": a, "b": b, "question": question,
           "all": cv.paired_auc(y, m[a], m[b]),
           "without_near_copies": (cv.paired_auc(y[keep], m[a][keep],
                                                 m[b][keep])
                                   if not keep.all() else None)}
          for name, a, b, question in COMPARISONS if a in arms and b in arms],
      "sensitivity_at_validation_thresholds": at_val,
      "sensitivity_at_test_roc_point": at_roc}
  return json.loads(json.dumps(results))


def arm_lines(r: dict) -> list[str]:
  lines = [
      "| arm | test AUC per seed | mean ± SD | seed-averaged AUC [95% CI] | "
      "without near-copies | validation AUC | Sen / Spe @ 0.884 | "
      "Sen / Spe @ 0.923 |", "|---|---|---|---|---|---|---|---|"]
  for a in r["arm_rows"]:
    w, s1, s2 = a["without_near_copies"], a["at_spe0.884"], a["at_spe0.923"]
    lines.append(
        f"| {a['arm']} | {' / '.join(cv._f(x) for x in a['auc_per_seed'])} | "
        f"{cv._msd(a['auc_seed_mean_sd'])} | {cv._f(a['auc'])} "
        f"[{cv._f(a['lo'])}, {cv._f(a['hi'])}] | "
        + ("-" if w is None else f"{cv._f(w['auc'])} [{cv._f(w['lo'])}, "
           f"{cv._f(w['hi'])}]")
        + f" | {cv._f(a['validation_auc'])} | {cv._f(s1['sensitivity'])} / "
        f"{cv._f(s1['specificity'])} | {cv._f(s2['sensitivity'])} / "
        f"{cv._f(s2['specificity'])} |")
  return lines


def markdown(r: dict) -> str:
  runs = r["runs"]
  lines = ([f"**Partial: {runs['finished']} of {runs['expected']} seeds "
            f"finished; missing: seeds {runs['missing']}. Every figure below "
            "covers the finished seeds only.**", ""] if runs["missing"] else [])
  lines += [
      f"# Test split: seeds {r['seeds']}, {r['num_images']} images, "
      f"{r['num_melanomas']} melanomas", "",
      "Each seed trains on the official training split; thresholds come from "
      f"the validation split ({r['num_validation_images']} images). An arm's "
      "score of an image is the mean over the seeds. "
      f"{r['near_copies']} test images ({r['near_copy_melanomas']} "
      "melanomas) have a near-copy in train + validation"
      + ("" if r["near_copies"] else " listed (no list was given)")
      + "; every verdict is given with all images and without those. "
      "Sen / Spe: at each arm's threshold for specificity 0.884 (0.923) on "
      "the seed-averaged validation scores.", ""] + arm_lines(r)
  lines += ["", "Paired AUC differences (a - b) on the seed-averaged test "
            "scores: DeLong 95% CI and p, bootstrap 95% CI "
            f"({cv.N_RESAMPLES:,} resamples, positives and negatives apart). "
            "RAP vs GAP control is primary.", "",
            "| comparison | ΔAUC | DeLong 95% CI | p | bootstrap 95% CI | "
            "ΔAUC without near-copies | DeLong 95% CI | p | bootstrap 95% CI |",
            "|---|---|---|---|---|---|---|---|---|"]
  lines += [f"| {c['name']} | {cv.auc_diff_cells(c['all'])} | "
            f"{cv.auc_diff_cells(c['without_near_copies'])} |"
            for c in r["comparisons"]]
  lines += cv.sensitivity_lines(
      r["sensitivity_at_validation_thresholds"],
      "Sensitivity at the validation thresholds (seed-averaged validation "
      "scores, target specificity 0.884 / 0.923), paired on the melanomas: "
      "exact McNemar, printed only when the specificities reached on the "
      f"test split differ by <= {r['match_tolerance']}.")
  lines += cv.sensitivity_lines(
      r["sensitivity_at_test_roc_point"],
      "Sensitivity at matched specificity: each arm's threshold reaches the "
      "target specificity on the test non-melanomas (a point of the two ROC "
      "curves, not a threshold for new data); exact McNemar on the "
      "melanomas.")
  return "\n".join(lines + [""])


def main(argv=None) -> int:
  parser = cv.report_parser(__doc__, "one run workdir per seed",
                            "--expected-seeds",
                            "comma-separated seeds meant to run")
  args = parser.parse_args(argv)
  status = cv.check_or_rebuild(args, compute_all, markdown)
  if status is not None:
    return status
  if not args.runs or not args.out:
    parser.error("give run workdirs and --out (or --check/--rebuild OUT)")
  write_report(args.runs, args.out,
               [int(s) for s in args.expected_seeds.split(",") if s],
               cv.near_copy_choice(args))
  return 0


if __name__ == "__main__":
  sys.exit(main())
