"""``results.md`` of the cross-validation report, from ``crossval.compute_all``'s
results (and OUT's arms, for the paper's Table 3)."""

from __future__ import annotations

import pandas as pd

from rapool_jax.analysis import paired
from rapool_jax.analysis import tables as tb

# Table 3 of the paper: classifiers on the same RAP features (ISIC 2017
# test), by arm, and the paper's Sen / Spe / Acc / AUC.
TABLE3_ARMS = (("RAP softmax", "joint"), ("RAP + RankOpt", "rankopt"),
               ("RAP + logistic regression (balanced)", "logistic_regression"))
PAPER_TABLE3 = {"joint": (0.444, 0.923, 0.833, 0.838),
                "rankopt": (0.607, 0.884, 0.833, 0.842)}
N = f"{paired.N_RESAMPLES:,}"
TOL = paired.MATCH_TOLERANCE


def partial_banner(runs: dict) -> list[str]:
  """The partial banner, when any expected fold run is missing."""
  if not runs["missing"]:
    return []
  missing = ", ".join(f"fold {f} seed {s}" for f, s in runs["missing"])
  return [f"**Partial: {runs['finished']} of {runs['expected']} fold runs "
          f"finished; missing: {missing}. Every figure below covers the "
          "finished runs only.**", ""]


def per_seed_cells(a: dict) -> list[str]:
  return [" / ".join(tb.num(x) for x in a["auc_per_seed"]),
          tb.mean_sd_text(a["auc_seed_mean_sd"]), tb.auc_ci(a)]


def seed_averaged_lines(r: dict) -> list[str]:
  arms = pd.DataFrame(
      [[a["arm"], *per_seed_cells(a), tb.num(a["auc_fold_mean"])]
       for a in r["arms"]],
      columns=["arm", "AUC per seed", "mean ± SD",
               "seed-averaged AUC [95% CI]", "fold mean"])
  diffs = pd.DataFrame([
      [c["name"], f"{s['diff']:+.3f}", tb.ci(s), tb.pval(s["p"]),
       tb.ci(s, "boot_lo", "boot_hi"),
       " ".join(f"{d:+.3f}" for d in s["fold_diffs"]), f"{p['diff']:+.3f}",
       tb.ci(p), tb.pval(p["p"]), tb.ci(p, "boot_lo", "boot_hi")]
      for c in r["comparisons"] for s, p in [(c["stratified"], c["pooled"])]],
      columns=["comparison", "fold-stratified ΔAUC", "DeLong 95% CI", "p",
               "bootstrap 95% CI", "per-fold Δ", "pooled ΔAUC",
               "DeLong 95% CI", "p", "bootstrap 95% CI"])
  return [
      f"## Out of fold, seed-averaged: seeds {r['seeds']}, {r['num_images']} "
      f"images, {r['num_melanomas']} melanomas", "",
      "Each image's score is the mean of its scores over the seeds (each by "
      "the fold model that never trained on it). AUC per seed: pooled "
      "out-of-fold AUC of each seed, mean ± SD over seeds; seed-averaged: "
      "AUC of the averaged scores, 95% DeLong CI; fold mean beside it.", ""
  ] + tb.markdown_table(arms) + [
      "", "Paired AUC differences (a - b) on the seed-averaged scores. "
      "**Fold-stratified is primary**: pooling the out-of-fold scores ranks "
      "images scored by different fold models against each other, so the "
      "pooled AUC mixes the fold models' calibrations with their ranking; "
      "the stratified difference uses (melanoma, non-melanoma) pairs within "
      "a fold only (per-fold DeLong differences weighted by P·Q, and a "
      "bootstrap resampling within folds). Pooled beside it. Bootstrap: "
      f"{N} resamples, positives and negatives apart.", ""
  ] + tb.markdown_table(diffs) + tb.sensitivity_lines(
      r["sensitivity"],
      "Sensitivity at matched specificity (seed-averaged scores): in each "
      "fold, each arm's threshold reaches the target specificity on that "
      "fold's held-out non-melanomas (a point of the two ROC curves, not a "
      "threshold for new data); paired on the melanomas, exact McNemar, "
      f"printed only when the specificities reached differ by <= {TOL}.")


def seed_lines(r: dict, arm_columns: dict) -> list[str]:
  at = lambda a, spe: (f"{tb.num(a[spe]['sensitivity'])} "  # noqa: E731
                       f"({tb.num(a[spe]['specificity'])})")
  arms = pd.DataFrame(
      [[a["arm"], tb.auc_ci(a), tb.num(a["auc_fold_mean"]),
        at(a, "at_spe0.884"), at(a, "at_spe0.923"), tb.num(a["jaccard"])]
       for a in r["arms"]],
      columns=["arm", "AUC [95% CI]", "fold mean", "Sen @ 0.884 (Spe)",
               "Sen @ 0.923 (Spe)", "JA"])
  diffs = pd.DataFrame(
      [[c["name"], *tb.auc_diff_cells(c).split(" | ")]
       for c in r["comparisons"]],
      columns=["comparison", "ΔAUC", "DeLong 95% CI", "p",
               "bootstrap 95% CI"])
  return [
      f"## Seed {r['seed']}: {r['num_images']} images, {r['num_melanomas']} "
      f"melanomas, folds {r['folds']}", "",
      "AUC: pooled out-of-fold, 95% DeLong CI; per-fold mean beside it. "
      "Sen/Spe: thresholds set on each fold's inner validation split at "
      "specificity 0.884 (0.923), applied to its held-out fold.", ""
  ] + tb.markdown_table(arms) + [
      "", "Paired AUC differences (a - b), same images, pooled: DeLong "
      f"95% CI and p, stratified bootstrap 95% CI ({N} resamples).", ""
  ] + tb.markdown_table(diffs) + tb.sensitivity_lines(
      r["sensitivity"],
      "Sensitivity at the validation thresholds (each fold's inner "
      "validation split, target specificity 0.884 / 0.923), paired on the "
      "melanomas: exact McNemar, printed only when the specificities reached "
      f"on the held-out folds differ by <= {TOL} (otherwise the "
      "sensitivities are not compared).") + table3_lines(r, arm_columns)


def table3_lines(r: dict, arm_columns: dict) -> list[str]:
  """The paper's Table 3 for the arms of ``TABLE3_ARMS`` this CV has."""
  rows = {a["arm"]: a for a in r["arms"]}
  cells = []
  for label, arm in TABLE3_ARMS:
    if arm in arm_columns:
      a, paper = rows[arm_columns[arm]], PAPER_TABLE3.get(arm)
      at = a["at_spe0.884"]
      cells.append([label, f"{at['sensitivity']:.3f}",
                    f"{at['specificity']:.3f}", f"{at['accuracy']:.3f}",
                    f"{a['auc']:.3f}",
                    " / ".join(f"{v:.3f}" for v in paper) if paper else "-"])
  return ["", "Table 3 under this protocol: Sen / Spe / Acc at the "
          "threshold set for specificity 0.884 on each fold's inner "
          "validation split; the paper's test-set figures beside them "
          "(its softmax row is at its own threshold, Spe 0.923).", ""
          ] + tb.markdown_table(pd.DataFrame(cells, columns=[
              "classifier", "Sen", "Spe", "Acc", "AUC",
              "paper Sen / Spe / Acc / AUC"]))


def test_lines(r: dict, averaged_over: str) -> list[str]:
  """The test-split section: per-arm AUCs and the paired differences."""
  near = r["near_copies"]
  arms = pd.DataFrame(
      [[a["arm"], *per_seed_cells(a),
        "-" if a["without_near_copies"] is None
        else tb.auc_ci(a["without_near_copies"])] for a in r["arms"]],
      columns=["arm", "AUC per seed", "mean ± SD",
               "seed-averaged AUC [95% CI]", "without near-copies"])
  return [
      f"## Test split: {r['num_images']} images, {r['num_melanomas']} "
      f"melanomas; seeds {r['seeds']}", "",
      f"Each arm's score of a test image is the mean over {averaged_over}. "
      f"{near} test images ({r['near_copy_melanomas']} melanomas) have a "
      "near-copy in train + validation"
      + ("" if near else " listed (no list was given)") + "; every verdict "
      "is given with all images and without those. AUC per seed: of that "
      "seed's averaged scores.", ""] + tb.markdown_table(arms) + [
          "", "Paired AUC differences (a - b) on the seed-averaged test "
          "scores: DeLong 95% CI and p, bootstrap 95% CI (positives and "
          "negatives resampled apart).", ""] + tb.near_copy_diff_lines(
              r["comparisons"])


def power_lines(p: dict) -> list[str]:
  """SE by seeds averaged, and the fit's floor and model parts."""
  if not p:
    return []
  first = p["out_of_fold"]
  rows = []
  for where, r in p.items():
    fit = r["fit"]
    cells = [f"{x['se']:.4f} (±{1.959964 * x['se']:.3f})"
             for x in r["by_seeds"]]
    cells += (["-", "-", "-"] if fit is None else [
        f"{fit['floor_se']:.4f}", f"{fit['model_se_one_seed']:.4f}",
        "unreachable (floor)" if fit["seeds_for_target"] is None
        else str(fit["seeds_for_target"])])
    rows.append(["out of fold, fold-stratified" if r["stratified"]
                 else where.replace("_", " ") + " split", *cells])
  columns = (["where"] + [f"k = {r['seeds']}" for r in first["by_seeds"]]
             + ["floor", "model (one seed)",
                f"seeds for ±{first['target_half_width']}"])
  return [f"## Power: SE of {first['a']} - {first['b']} by seeds averaged",
          "", "SE (DeLong) of the difference on scores averaged over k "
          "seeds, the mean over every k-subset of the seeds; the half-width "
          "of its 95% CI is 1.96 SE, the smallest difference found with 80% "
          "power 2.8 SE. Fit: SE²(k) = floor² + model² / k (non-negative "
          "least squares): the floor is image sampling, which more seeds do "
          "not remove.", ""] + tb.markdown_table(
              pd.DataFrame(rows, columns=columns))


def verdict_lines(results: dict) -> list[str]:
  """Every comparison's seed-averaged verdict, out of fold (fold-stratified,
  then pooled) and on the test split (all images, then without near-copies)."""
  test = results.get("test")
  cell = lambda x: "-" if x is None else (  # noqa: E731
      f"{x['diff']:+.3f} {tb.ci(x)}, p {tb.pval(x['p'])}")
  columns = ["comparison", "out of fold, fold-stratified (primary)",
             "out of fold, pooled"]
  if test:
    columns += ["test split, all images", "test split, without near-copies"]
  by_name = {c["name"]: c for c in (test or {}).get("comparisons", [])}
  rows = []
  for c in results["seed_averaged"]["comparisons"]:
    t = by_name.get(c["name"], {})  # none: an arm with no test scores
    rows.append([c["name"], cell(c["stratified"]), cell(c["pooled"])]
                + ([cell(t.get("all")), cell(t.get("without_near_copies"))]
                   if test else []))
  return ["## Verdicts", ""] + tb.markdown_table(
      pd.DataFrame(rows, columns=columns)) + [
          "", "Seed-averaged scores; 95% DeLong CIs (bootstrap CIs "
          "in the tables below)." + ("" if test else " No test "
          "split: these runs wrote no test_scores.csv.")]


def markdown(results: dict, arm_columns: dict) -> str:
  """results.md; ``arm_columns`` (arm -> column) names Table 3's rows."""
  lines = partial_banner(results["runs"])
  lines += ["# Cross-validation: out-of-fold and test-split verdicts", ""]
  lines += verdict_lines(results) + [""]
  lines += seed_averaged_lines(results["seed_averaged"]) + [""]
  lines += power_lines(results.get("power", {})) + [""]
  if "test" in results:
    lines += test_lines(results["test"],
                        "the fold models of every seed (one per fold and "
                        "seed)") + [""]
  for r in results["by_seed"]:
    lines += seed_lines(r, arm_columns) + [""]
  return "\n".join(lines)
