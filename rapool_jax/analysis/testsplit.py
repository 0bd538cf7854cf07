"""The test-split report: one run per seed on the official splits.

OUT holds ``test_scores.csv`` and ``val_scores.csv`` (``image,label,seed``,
one column per arm), ``runs.csv`` (``seed,finished``), ``arms.csv`` and
``comparisons.csv``, and ``test_near_copies.csv``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from rapool_jax import metrics
from rapool_jax import stats
from rapool_jax.analysis import crossval
from rapool_jax.analysis import design
from rapool_jax.analysis import frames
from rapool_jax.analysis import near_copies
from rapool_jax.analysis import paired
from rapool_jax.analysis import recompute
from rapool_jax.analysis import runs
from rapool_jax.analysis import tables as tb

KEYS = ("image", "label", "seed")
SPECIFICITIES = crossval.SPECIFICITIES


def collect(run_dirs, declaring: dict | None = None) -> dict:
  """Frames of ``test`` and ``val`` (one row per image and seed), the arms
  (arm -> column) and the comparisons of the runs' config (or of
  ``declaring``, a config as JSON)."""
  parts, arms = {"test": [], "val": []}, None
  for run in sorted(run_dirs):
    config = frames.run_config(run)
    these = runs.run_arms(run, config)
    if arms is not None and these != arms:
      raise ValueError(f"{run}: arms {list(these.values())} differ from "
                       f"{list(arms.values())}")
    arms, key = these, {"seed": config["seed"]}
    for name, split in (("test", "eval_split"), ("val", "val_split")):
      parts[name].append(frames.run_scores(run, config["data"][split],
                                           list(arms.values()), key))
  comparisons, notes = design.applicable(
      frames.run_config(sorted(run_dirs)[0]), declaring)
  for line in notes:
    print(line, flush=True)
  return {**{n: pd.concat(p, ignore_index=True)[[*KEYS, *arms.values()]]
             for n, p in parts.items()},
          "arms": arms, "comparisons": comparisons}


def write_csvs(out: str, c: dict, expected_seeds=()) -> None:
  p = lambda name: os.path.join(out, name)  # noqa: E731
  design.write(out, c["arms"], c["comparisons"])
  frames.write_csv(p("test_scores.csv"), c["test"])
  frames.write_csv(p("val_scores.csv"), c["val"])
  finished = set(c["test"]["seed"].tolist())
  frames.write_csv(p("runs.csv"), pd.DataFrame(
      [(s, int(s in finished)) for s in sorted(set(expected_seeds) | finished)],
      columns=["seed", "finished"]))


def read_tables(out: str) -> dict:
  p = lambda name: os.path.join(out, name)  # noqa: E731
  t = {n: frames.score_frame(frames.read_csv(p(f"{n}_scores.csv")), KEYS,
                             p(f"{n}_scores.csv")) for n in ("test", "val")}
  t["runs"] = frames.read_csv(p("runs.csv")).astype(int)
  t["arms"] = frames.arm_columns(t["test"], KEYS)
  t["near_copies"] = near_copies.read(out)
  t["design"] = design.read(out)
  return t


def validate(t: dict) -> list[str]:
  """Each image scored once per seed, by every finished seed, one arm set."""
  problems = design.check_columns(t["design"][0], t["arms"], "test_scores.csv")
  finished = set(t["runs"].loc[t["runs"]["finished"] == 1, "seed"].tolist())
  for n in ("test", "val"):
    name, c = f"{n}_scores.csv", t[n]
    if frames.arm_columns(c, KEYS) != t["arms"]:
      problems.append(f"{name}: arms {frames.arm_columns(c, KEYS)} differ "
                      f"from test_scores.csv's {t['arms']}")
    problems += frames.duplicates(c, ("image", "seed"), name)
    problems += frames.same_images_per_group(c.assign(all=0), ("all", "seed"),
                                             name)
    scored = set(c["seed"].tolist())
    problems += [f"{name}: seed {s} "
                 + ("has rows but runs.csv does not list it as finished"
                    if s in scored else "is finished in runs.csv but has no "
                    "rows") for s in sorted(scored ^ finished)]
  if t["near_copies"] is not None:
    problems += [f"{near_copies.FILE}: {i} is not a test image"
                 for i in sorted(set(t["near_copies"])
                                 - set(t["test"]["image"]))]
  return problems


def arm_rows(t, m, v, keep) -> list[dict]:
  """Per arm: test AUC per seed, seed-averaged test AUC [CI] with and
  without near-copies, validation AUC, operating points at the validation
  thresholds."""
  y, vy = m["label"].to_numpy(), v["label"].to_numpy()
  rows = []
  for a in t["arms"]:
    s = m[a].to_numpy()
    per_seed = crossval.per_seed_aucs(t["test"], a)
    row = {"arm": a, "auc_per_seed": per_seed,
           "auc_seed_mean_sd": paired.mean_sd(per_seed), **stats.auc_ci(y, s),
           "without_near_copies": (stats.auc_ci(y[keep], s[keep])
                                   if not keep.all() else None),
           "validation_auc": metrics.roc_auc(vy, v[a].to_numpy())}
    for spe in SPECIFICITIES:
      thr = metrics.threshold_at_specificity(vy, v[a].to_numpy(), spe)
      pred = s >= thr
      row[f"at_spe{spe}"] = {"threshold": thr,
                             "sensitivity": float(pred[y == 1].mean()),
                             "specificity": float(1 - pred[y == 0].mean())}
    rows.append(row)
  return rows


def sensitivities(sens, m, v) -> tuple[list[dict], list[dict]]:
  """(at the validation thresholds, at the test ROC point) per comparison
  and target specificity, on the seed-averaged scores."""
  y, vy = m["label"].to_numpy(), v["label"].to_numpy()
  at_val, at_roc = [], []
  for c in sens:
    a, b = m[c.a].to_numpy(), m[c.b].to_numpy()
    for spe in SPECIFICITIES:
      key = {"name": c.name, "a": c.a, "b": c.b, "specificity": spe}
      thr = [metrics.threshold_at_specificity(vy, v[x].to_numpy(), spe)
             for x in (c.a, c.b)]
      at_val.append({**key, **paired.matched_sensitivity(y, a, b, *thr)})
      thr = [metrics.threshold_at_specificity(y, x, spe) for x in (a, b)]
      at_roc.append({**key, **paired.matched_sensitivity(y, a, b, *thr)})
  return at_val, at_roc


def comparison_rows(auc, m, keep) -> list[dict]:
  y = m["label"].to_numpy()
  col = lambda a: m[a].to_numpy()  # noqa: E731
  return [{"name": c.name, "a": c.a, "b": c.b, "question": c.question,
           "all": paired.paired_auc(y, col(c.a), col(c.b)),
           "without_near_copies": (paired.paired_auc(
               y[keep], col(c.a)[keep], col(c.b)[keep])
                                   if not keep.all() else None)}
          for c in auc]


def compute_all(out: str) -> dict:
  """Every figure of results.json from OUT's CSVs (ValueError on bad CSVs)."""
  t = recompute.valid_tables(out, read_tables, validate)
  auc, sens = design.resolve_both(*t["design"])
  m = frames.average_wide(t["test"], KEYS)
  v = frames.average_wide(t["val"], KEYS)
  keep = ~np.isin(m["image"].to_numpy(), sorted(t["near_copies"] or ()))
  y = m["label"].to_numpy()
  at_val, at_roc = sensitivities(sens, m, v)
  missing = t["runs"].loc[t["runs"]["finished"] == 0, "seed"].tolist()
  results = {
      "arms": t["arms"], "match_tolerance": paired.MATCH_TOLERANCE,
      "runs": {"expected": len(t["runs"]), "finished": len(t["runs"])
               - len(missing), "missing": missing},
      "seeds": sorted(set(t["test"]["seed"].tolist())),
      "num_images": int(len(y)), "num_melanomas": int(y.sum()),
      "num_validation_images": int(len(v)),
      "near_copies": int((~keep).sum()),
      "near_copy_melanomas": int(y[~keep].sum()),
      "arm_rows": arm_rows(t, m, v, keep),
      "comparisons": comparison_rows(auc, m, keep),
      "sensitivity_at_validation_thresholds": at_val,
      "sensitivity_at_test_roc_point": at_roc}
  return json.loads(json.dumps(results))


def arm_lines(r: dict) -> list[str]:
  op = lambda a, spe: (f"{tb.num(a[spe]['sensitivity'])} / "  # noqa: E731
                       f"{tb.num(a[spe]['specificity'])}")
  return tb.markdown_table(pd.DataFrame(
      [[a["arm"], " / ".join(tb.num(x) for x in a["auc_per_seed"]),
        tb.mean_sd_text(a["auc_seed_mean_sd"]), tb.auc_ci(a),
        "-" if a["without_near_copies"] is None
        else tb.auc_ci(a["without_near_copies"]),
        tb.num(a["validation_auc"]), op(a, "at_spe0.884"),
        op(a, "at_spe0.923")] for a in r["arm_rows"]],
      columns=["arm", "test AUC per seed", "mean ± SD",
               "seed-averaged AUC [95% CI]", "without near-copies",
               "validation AUC", "Sen / Spe @ 0.884", "Sen / Spe @ 0.923"]))


def markdown(r: dict) -> str:
  """results.md of the test-split report."""
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
            f"({paired.N_RESAMPLES:,} resamples, positives and negatives "
            "apart). RAP vs GAP control is primary.", ""]
  lines += tb.near_copy_diff_lines(r["comparisons"])
  lines += tb.sensitivity_lines(
      r["sensitivity_at_validation_thresholds"],
      "Sensitivity at the validation thresholds (seed-averaged validation "
      "scores, target specificity 0.884 / 0.923), paired on the melanomas: "
      "exact McNemar, printed only when the specificities reached on the "
      f"test split differ by <= {r['match_tolerance']}.")
  lines += tb.sensitivity_lines(
      r["sensitivity_at_test_roc_point"],
      "Sensitivity at matched specificity: each arm's threshold reaches the "
      "target specificity on the test non-melanomas (a point of the two ROC "
      "curves, not a threshold for new data); exact McNemar on the "
      "melanomas.")
  return "\n".join(lines + [""])
