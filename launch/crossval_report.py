"""The pooled out-of-fold table of a cross-validation (``launch/crossval.py``).

    python launch/crossval_report.py RUN_DIR [RUN_DIR ...] --out OUT
    python launch/crossval_report.py --check OUT

From each fold run's per-image predictions it writes to OUT:

* ``oof_scores.csv``: ``image,label,fold,seed``, then one score column per arm
  (each image scored by the run that never trained on it);
* ``oof_jaccard.csv``: the same layout, per-image Jaccard of each arm's mask;
* ``thresholds.csv``: per fold, seed and arm, the thresholds reaching
  specificity 0.884 and 0.923 on that fold's inner validation split (training
  data of the fold, never the scored images);
* ``results.json``, ``results.md`` and ``roc.png``: per arm AUC with a 95%
  DeLong CI, sensitivity at the fixed specificities with those thresholds, JA;
  paired differences (DeLong and stratified bootstrap) against the GAP-only
  control and the other comparisons of the paper's claims.

Everything in the tables is a function of the three CSVs alone, and
``--check OUT`` recomputes ``results.json`` from them.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rapool_jax import metrics  # noqa: E402
from rapool_jax import stats  # noqa: E402

SPECIFICITIES = (0.884, 0.923)  # the paper's RankOpt and softmax operating points
CONTROL = "gap_control"
KEYS = ("image", "label", "fold", "seed")
# (name, arm a, arm b, question): the paired comparisons that answer the
# paper's claims; a comparison whose arms a run lacks is left out.
COMPARISONS = (
    ("RAP vs GAP control (primary)", "rap_lambda_7.5", CONTROL,
     "Does region pooling beat GAP trained as long?"),
    ("RAP vs Step 2", "rap_lambda_7.5", "step_2_gap",
     "Does Step 4 keep (or raise) Step 2's AUC?"),
    ("RAP vs GAP + seg loss", "rap_lambda_7.5", "gap_seg_loss_lambda_7.5",
     "Is the gain the pooling, given the same segmentation loss?"),
    ("GAP control vs Step 2", CONTROL, "step_2_gap",
     "What do the extra steps alone give?"),
    ("RAP lambda 1 vs 7.5", "rap_lambda_1", "rap_lambda_7.5", "lambda"),
    ("RAP lambda 0.1 vs 7.5", "rap_lambda_0.1", "rap_lambda_7.5", "lambda"),
    ("RAP normalized vs RAP", "rap_normalized_lambda_7.5", "rap_lambda_7.5",
     "Eq. 1 divides by WH, not by the lesion area"),
    ("mask oracle vs RAP", "mask_oracle_lambda_7.5", "rap_lambda_7.5",
     "How much would a perfect lesion map add?"),
    ("RankOpt vs RAP softmax", "rap_rankopt", "rap_lambda_7.5",
     "Does RankOpt raise AUC on the same features?"),
    ("RankOpt vs logistic regression", "rap_rankopt",
     "rap_logistic_regression", "RankOpt against a plain linear baseline"),
)
# Sensitivity at a fixed specificity, paired on the melanomas (McNemar).
# Table 3 of the paper: classifiers on the same RAP features (ISIC 2017 test).
TABLE3_ARMS = (("RAP softmax", "rap_lambda_7.5"),
               ("RAP + RankOpt", "rap_rankopt"),
               ("RAP + logistic regression (balanced)", "rap_logistic_regression"))
PAPER_TABLE3 = {"rap_lambda_7.5": (0.444, 0.923, 0.833, 0.838),
                "rap_rankopt": (0.607, 0.884, 0.833, 0.842)}
SENSITIVITY_COMPARISONS = (
    ("RankOpt vs RAP softmax", "rap_rankopt", "rap_lambda_7.5"),
    ("RankOpt vs logistic regression", "rap_rankopt",
     "rap_logistic_regression"),
    ("RAP vs GAP control", "rap_lambda_7.5", CONTROL),
)


# ----------------------------------------------------------------------------
# Collecting the fold runs' predictions.


def _read_predictions(path: str) -> dict:
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  return {r["image"]: r for r in rows}


def _arms_in_order(run_dir: str) -> list[str]:
  """Arm names (file stems) in the order of the run's results rows."""
  from rapool_jax import evaluate  # pylint: disable=g-import-not-at-top
  with open(os.path.join(run_dir, "results.json")) as f:
    return [evaluate.row_slug(r["model"]) for r in json.load(f)["rows"]]


def collect(run_dirs) -> tuple[list[dict], list[dict], list[dict], list[str]]:
  """(oof score rows, oof Jaccard rows, threshold rows, arms) of the runs."""
  oof, jac, thresholds, arms = [], [], [], None
  for run in sorted(run_dirs):
    with open(os.path.join(run, "config.json")) as f:
      config = json.load(f)
    fold, seed = config["data"]["crossval"]["fold"], config["seed"]
    run_arms = _arms_in_order(run)
    if arms is None:
      arms = run_arms
    elif run_arms != arms:
      raise ValueError(f"{run}: arms {run_arms} differ from {arms}")
    test = {a: _read_predictions(os.path.join(
        run, "predictions", config["data"]["eval_split"], a + ".csv"))
            for a in arms}
    for image, first in sorted(test[arms[0]].items()):
      key = {"image": image, "label": int(first["label"]), "fold": fold,
             "seed": seed}
      oof.append({**key, **{a: float(test[a][image]["score"]) for a in arms}})
      jac.append({**key, **{a: test[a][image].get("jaccard", "")
                            for a in arms}})
    for a in arms:
      val = _read_predictions(os.path.join(
          run, "predictions", config["data"]["val_split"], a + ".csv"))
      labels = np.array([int(r["label"]) for r in val.values()])
      scores = np.array([float(r["score"]) for r in val.values()])
      row = {"fold": fold, "seed": seed, "arm": a}
      for spe in SPECIFICITIES:
        row[f"threshold_spe{spe}"] = metrics.threshold_at_specificity(
            labels, scores, spe)
      thresholds.append(row)
  return oof, jac, thresholds, arms


def _write_csv(path: str, rows: list[dict], columns) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(columns))
    w.writeheader()
    for r in rows:
      w.writerow({k: (repr(v) if isinstance(v, float) else v)
                  for k, v in r.items()})


def read_tables(out: str):
  """The three CSVs of OUT as numpy columns: (oof, jaccard, thresholds, arms)."""
  def load(name):
    with open(os.path.join(out, name), newline="") as f:
      return list(csv.DictReader(f))
  oof_rows = load("oof_scores.csv")
  arms = [c for c in oof_rows[0] if c not in KEYS]
  oof = {k: np.array([r[k] for r in oof_rows]) for k in oof_rows[0]}
  for k in ("label", "fold", "seed"):
    oof[k] = oof[k].astype(int)
  for a in arms:
    oof[a] = oof[a].astype(float)
  jac_rows = load("oof_jaccard.csv")
  jac = {a: np.array([float(r[a]) if r[a] else math.nan for r in jac_rows])
         for a in arms}
  thresholds = {(int(r["fold"]), int(r["seed"]), r["arm"]):
                {spe: float(r[f"threshold_spe{spe}"]) for spe in SPECIFICITIES}
                for r in load("thresholds.csv")}
  return oof, jac, thresholds, arms


# ----------------------------------------------------------------------------
# The statistics (a pure function of the CSVs).


def predicted_positive(oof, thresholds, arm: str, spe: float) -> np.ndarray:
  """``[N]`` bool: score >= its own fold's threshold for ``spe``."""
  thr = np.array([thresholds[(f, s, arm)][spe]
                  for f, s in zip(oof["fold"], oof["seed"])])
  return oof[arm] >= thr


def compute(oof, jac, thresholds, arms, seed: int, n_resamples: int = 2000):
  """Results of one seed: per-arm rows, AUC comparisons, sensitivity tests."""
  keep = oof["seed"] == seed
  o = {k: v[keep] for k, v in oof.items()}
  y = o["label"]
  rows = []
  for a in arms:
    row = {"arm": a, **stats.auc_ci(y, o[a])}
    folds = sorted(set(o["fold"]))
    row["auc_fold_mean"] = float(np.mean(
        [metrics.roc_auc(y[o["fold"] == f], o[a][o["fold"] == f]) for f in folds]))
    for spe in SPECIFICITIES:
      ss = metrics.operating_point(
          y, predicted_positive(o, thresholds, a, spe).astype(float), 0.5)
      row[f"at_spe{spe}"] = {
          "sensitivity": ss["sensitivity"], "specificity": ss["specificity"],
          "accuracy": (ss["tp"] + ss["tn"]) / len(y)}
    ja = jac[a][keep]
    row["jaccard"] = float(np.nanmean(ja)) if np.isfinite(ja).any() else None
    rows.append(row)
  comparisons = []
  for name, a, b, question in COMPARISONS:
    if a in arms and b in arms:
      d = stats.paired_delong(y, o[a], o[b])
      boot = stats.paired_bootstrap_auc_diff(y, o[a], o[b],
                                             n_resamples=n_resamples, seed=seed)
      comparisons.append({"name": name, "a": a, "b": b, "question": question,
                          **d, "boot_lo": boot["lo"], "boot_hi": boot["hi"]})
  sens = []
  for name, a, b in SENSITIVITY_COMPARISONS:
    if a in arms and b in arms:
      for spe in SPECIFICITIES:
        pa = predicted_positive(o, thresholds, a, spe)
        pb = predicted_positive(o, thresholds, b, spe)
        m = stats.mcnemar(pa[y == 1], pb[y == 1])
        sens.append({"name": name, "a": a, "b": b, "specificity": spe,
                     "sens_a": float(pa[y == 1].mean()),
                     "sens_b": float(pb[y == 1].mean()),
                     "spe_a": float(1 - pa[y == 0].mean()),
                     "spe_b": float(1 - pb[y == 0].mean()), **m})
  return {"seed": seed, "num_images": int(len(y)),
          "num_melanomas": int(y.sum()), "folds": sorted(map(int, set(o["fold"]))),
          "arms": rows, "comparisons": comparisons, "sensitivity": sens}


def compute_all(out: str) -> dict:
  oof, jac, thresholds, arms = read_tables(out)
  return {"arms": arms,
          "by_seed": [compute(oof, jac, thresholds, arms, int(s))
                      for s in sorted(set(oof["seed"]))]}


# ----------------------------------------------------------------------------
# Writing.


def _f(x, d=3):
  return "-" if x is None else f"{x:.{d}f}"


def _p(p):
  return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def markdown(results: dict, header: str = "") -> str:
  lines = [header] if header else []
  for r in results["by_seed"]:
    lines += [
        f"## Seed {r['seed']}: {r['num_images']} images, {r['num_melanomas']} "
        f"melanomas, folds {r['folds']}", "",
        "AUC: pooled out-of-fold, 95% DeLong CI; per-fold mean beside it. "
        "Sen/Spe: thresholds set on each fold's inner validation split at "
        "specificity 0.884 (0.923), applied to its held-out fold.", "",
        "| arm | AUC [95% CI] | fold mean | Sen @ 0.884 (Spe) | "
        "Sen @ 0.923 (Spe) | JA |", "|---|---|---|---|---|---|"]
    for a in r["arms"]:
      s1, s2 = a["at_spe0.884"], a["at_spe0.923"]
      lines.append(
          f"| {a['arm']} | {_f(a['auc'])} [{_f(a['lo'])}, {_f(a['hi'])}] | "
          f"{_f(a['auc_fold_mean'])} | {_f(s1['sensitivity'])} "
          f"({_f(s1['specificity'])}) | {_f(s2['sensitivity'])} "
          f"({_f(s2['specificity'])}) | {_f(a['jaccard'])} |")
    lines += ["", "Paired AUC differences (a - b), same images: DeLong 95% CI "
              "and p, stratified bootstrap 95% CI (2,000 resamples).", "",
              "| comparison | ΔAUC | DeLong 95% CI | p | bootstrap 95% CI |",
              "|---|---|---|---|---|"]
    for c in r["comparisons"]:
      lines.append(
          f"| {c['name']} | {c['diff']:+.3f} | [{c['lo']:+.3f}, "
          f"{c['hi']:+.3f}] | {_p(c['p'])} | [{c['boot_lo']:+.3f}, "
          f"{c['boot_hi']:+.3f}] |")
    lines += ["", "Sensitivity at a fixed specificity (thresholds from the "
              "inner validation splits), paired on the melanomas: exact "
              "McNemar test.", "",
              "| comparison | target Spe | Sen a (Spe a) | Sen b (Spe b) | "
              "a only / b only | p |", "|---|---|---|---|---|---|"]
    for s in r["sensitivity"]:
      lines.append(
          f"| {s['name']} | {s['specificity']} | {s['sens_a']:.3f} "
          f"({s['spe_a']:.3f}) | {s['sens_b']:.3f} ({s['spe_b']:.3f}) | "
          f"{s['b']} / {s['c']} | {_p(s['p'])} |")
    arms = {a["arm"]: a for a in r["arms"]}
    lines += ["", "Table 3 under this protocol: Sen / Spe / Acc at the "
              "threshold set for specificity 0.884 on each fold's inner "
              "validation split; the paper's test-set figures beside them "
              "(its softmax row is at its own threshold, Spe 0.923).", "",
              "| classifier | Sen | Spe | Acc | AUC | paper Sen / Spe / Acc / AUC |",
              "|---|---|---|---|---|---|"]
    for label, arm in TABLE3_ARMS:
      if arm in arms:
        a, paper = arms[arm], PAPER_TABLE3.get(arm)
        at = a["at_spe0.884"]
        lines.append(
            f"| {label} | {at['sensitivity']:.3f} | {at['specificity']:.3f} | "
            f"{at['accuracy']:.3f} | {a['auc']:.3f} | "
            + (" / ".join(f"{v:.3f}" for v in paper) if paper else "-") + " |")
    lines.append("")
  return "\n".join(lines)


def plot_roc(path: str, oof, arms, seed: int) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  keep = oof["seed"] == seed
  fig, ax = plt.subplots(figsize=(6, 6))
  for a in arms:
    fpr, tpr, _ = metrics.roc_curve(oof["label"][keep], oof[a][keep])
    ax.plot(fpr, tpr, label=f"{a} ({metrics.roc_auc(oof['label'][keep], oof[a][keep]):.3f})",
            lw=1.2)
  ax.plot([0, 1], [0, 1], "k:", lw=0.8)
  for spe in SPECIFICITIES:
    ax.axvline(1 - spe, color="grey", lw=0.6, ls="--")
  ax.set(xlabel="1 - specificity", ylabel="sensitivity",
         title=f"Out-of-fold ROC, seed {seed}")
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(run_dirs, out: str, expected_runs: int | None = None,
                 header: str = "") -> dict:
  """Collects RUN_DIRS' predictions into OUT's CSVs, then the tables."""
  os.makedirs(out, exist_ok=True)
  oof, jac, thresholds, arms = collect(run_dirs)
  _write_csv(os.path.join(out, "oof_scores.csv"), oof, KEYS + tuple(arms))
  _write_csv(os.path.join(out, "oof_jaccard.csv"), jac, KEYS + tuple(arms))
  _write_csv(os.path.join(out, "thresholds.csv"), thresholds,
             ("fold", "seed", "arm") + tuple(f"threshold_spe{s}"
                                            for s in SPECIFICITIES))
  results = compute_all(out)
  results["runs"] = len(run_dirs)
  if expected_runs and len(run_dirs) < expected_runs:
    header = (f"**Partial: {len(run_dirs)} of {expected_runs} fold runs "
              "finished.**\n\n" + header)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=1, sort_keys=True)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(markdown(results, header))
  table_oof, _, _, _ = read_tables(out)
  for seed in sorted(set(table_oof["seed"])):
    plot_roc(os.path.join(out, f"roc_seed{seed}.png"), table_oof, arms, seed)
  print(f"wrote {out}/results.md", flush=True)
  return results


def check(out: str) -> list[str]:
  """Differences between OUT/results.json and a recomputation from its CSVs."""
  with open(os.path.join(out, "results.json")) as f:
    saved = json.load(f)
  fresh = compute_all(out)
  diffs = []

  def walk(a, b, where):
    if isinstance(a, dict):
      for k in a:
        if k in b:
          walk(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
      for i, (x, y) in enumerate(zip(a, b)):
        walk(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
      if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
        diffs.append(f"{where}: saved {b}, recomputed {a}")
    elif a != b:
      diffs.append(f"{where}: saved {b}, recomputed {a}")
  walk(fresh, saved, "results")
  return diffs


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="*", help="fold run workdirs")
  parser.add_argument("--out", default="")
  parser.add_argument("--check", default="",
                      help="recompute OUT/results.json from OUT's CSVs")
  args = parser.parse_args(argv)
  if args.check:
    diffs = check(args.check)
    print("\n".join(diffs) or f"{args.check}: results.json recomputes from "
          "its CSVs", flush=True)
    return 1 if diffs else 0
  if not args.runs or not args.out:
    parser.error("give fold run workdirs and --out (or --check OUT)")
  write_report(args.runs, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
