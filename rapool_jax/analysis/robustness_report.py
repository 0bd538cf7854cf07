"""The robustness folder: its per-image CSVs in, ``results.json``,
``results.md`` and figures out, and ``check`` that recomputes them.

Everything written is a function of the CSVs in the folder (and the artefact
flags, read from ``../shared``, never copied): ``strata_scores.csv``
(seed-averaged RAP and GAP-control scores per image, out of fold and on the
test split), ``versions.csv`` (every fold model on every image version, with
CAM energy) and ``trap.csv`` (held-out scores of the trap runs).
"""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from rapool_jax import errors  # noqa: E402
from rapool_jax.analysis import crossval  # noqa: E402
from rapool_jax.analysis import frames  # noqa: E402
from rapool_jax.analysis import robustness as rb  # noqa: E402

A, B = "RAP", "GAP control"
SPLITS = {"oof": "out of fold", "test": "test split"}
# Recipe 2 (runlocal's recipe on the official splits) lives in this subfolder
# of recipe 1's folder, with the same CSVs (strata on the test split only).
RECIPE2 = "recipe2"
FULLSIZE = "fullsize"  # launch/robustness_fullsize.sh's folder
TITLES = {"recipe 1": "recipe 1, the CV's",
          "recipe 2": "recipe 2, runlocal's on the official splits",
          FULLSIZE: "the paper's size on CV fold 0"}


def recipe_of(out: str) -> str:
  name = os.path.basename(os.path.normpath(out))
  return {RECIPE2: "recipe 2", FULLSIZE: FULLSIZE}.get(name, "recipe 1")


def title(results: dict) -> str:
  """``TITLES``' entry, with the network and steps of ``runs.csv``."""
  r = results.get("recipe")
  return TITLES[results["recipe name"]] + (
      f": ResNet-{r['depth']} at width {r['width']}, {r['crop px']} px "
      f"crops, {r['Step-4 steps']} Step-4 steps, {r['runs']} runs" if r
      else "")


def splits_of(results: dict) -> dict:
  """``SPLITS`` entries whose strata the results hold."""
  return {k: v for k, v in SPLITS.items() if f"strata_{k}" in results}


def write_strata_scores(cv_scores: str, arms: dict, out: str) -> None:
  """``strata_scores.csv``: the CV report's seed-averaged scores
  (``crossval.seed_averaged_scores``) of ``arms`` (``{arm: name}``), out of
  fold and on the test split, a row per image."""
  parts = []
  for split in ("oof", "test"):
    long = crossval.seed_averaged_scores(cv_scores, split)
    missing = set(arms) - set(long.arm)
    if missing:
      raise errors.UserError(f"{cv_scores}: no scores of arm "
                             f"{sorted(missing)[0]!r}")
    long = long[long.arm.isin(arms)].assign(arm=lambda f: f.arm.map(arms))
    wide = frames.widen(long, ["image", "label", "fold", "n"])
    parts.append(wide.assign(split=split, fold=wide.fold.clip(lower=0)))
  pd.concat(parts)[["split", "image", "fold", "label", "n", A, B]].rename(
      columns={"n": "models"}).to_csv(os.path.join(out, "strata_scores.csv"),
                                      index=False, float_format="%.7g")


def _records(table: pd.DataFrame) -> list[dict]:
  return json.loads(table.reset_index().to_json(orient="records"))


def analyse(out: str, artefacts: str) -> dict:
  """Every figure of the folder, from its CSVs: ``{section: records}``."""
  scores = pd.read_csv(os.path.join(out, "strata_scores.csv"))
  # Every recipe scores the whole test split; out of fold a partial CV (the
  # fullsize run's one fold) scores some of the annotated images only.
  tested = scores.split == "test"
  flags = (rb.read_artefacts(artefacts, scores.image[tested], split="test")
           if tested.any() else rb.read_artefacts(artefacts, scores.image))
  results = {"recipe name": recipe_of(out)}
  for split, part in scores.groupby("split"):
    wide = part.set_index("image")
    annotated = wide.index.isin(flags.index)
    results[f"strata_{split}"] = {
        "images": len(wide), "unannotated": int((~annotated).sum()),
        "models per image": int(part.models.max()),
        "rows": _records(rb.strata_table(wide, flags, A, B))}
  versions = os.path.join(out, "versions.csv")
  if os.path.exists(versions):
    frame = pd.read_csv(versions)
    results["runs"] = sorted(map(list, set(zip(frame.fold, frame.seed))))
    results["versions"] = _records(rb.versions_table(frame, A, B))
    results["cam"] = rb.cam_tables(frame, A, B)
  trap = os.path.join(out, "trap.csv")
  if os.path.exists(trap):
    results["trap"] = _records(rb.trap_table(pd.read_csv(trap), A, B))
  runs = os.path.join(out, "runs.csv")
  if os.path.exists(runs):
    results["recipe"] = rb.recipe_properties(pd.read_csv(runs))
  recipe2 = os.path.join(out, RECIPE2)
  if os.path.exists(os.path.join(recipe2, "strata_scores.csv")):
    results["recipes"] = recipes(out, recipe2, results,
                                 analyse(recipe2, artefacts), flags)
  return json.loads(json.dumps(results))  # the floats exactly as stored


def recipes(out1: str, out2: str, results1: dict, results2: dict,
            flags: pd.DataFrame) -> dict:
  """Both recipes side by side on the test split: their properties, the
  primary interaction, CAM energy inside the lesion and background-only
  AUCs, and recipe 2's interaction minus recipe 1's (paired bootstrap on
  the same test images)."""
  rows = []
  for name, r in (("recipe 1", results1), ("recipe 2", results2)):
    primary = r["strata_test"]["rows"][0]
    row = {"recipe": name, **r.get("recipe", {}),
           "models per test image": r["strata_test"]["models per image"],
           "D with": primary["D with"], "D reference": primary["D reference"],
           "interaction": primary["interaction"], "lo": primary["lo"],
           "hi": primary["hi"]}
    if "cam" in r:
      row |= {f"CAM inside {A}": r["cam"]["share"][f"mean {A}"],
              f"CAM inside {B}": r["cam"]["share"][f"mean {B}"]}
    for v in r.get("versions", []):
      if v["version"] == "background_only":
        row |= {f"background only {A}": v[f"AUC {A}"],
                f"background only {B}": v[f"AUC {B}"]}
    rows.append(row)
  test = [pd.read_csv(os.path.join(o, "strata_scores.csv")).query(
      "split == 'test'").set_index("image") for o in (out1, out2)]
  return {"rows": rows,
          "difference": rb.recipe_difference(*test, flags, A, B)}


def _fmt(v, column: str) -> str:
  if v is None or (isinstance(v, float) and np.isnan(v)):
    return "-"
  if isinstance(v, float) and column.startswith("p"):
    return f"{v:.2g}" if v < 0.001 else f"{v:.3f}"
  if isinstance(v, float) and column == "bias":
    return f"{v:g}"
  if isinstance(v, float):
    unsigned = ("AUC", "mean", "width", "Jaccard", "CAM inside",
                "background only")
    return f"{v:.3f}" if any(column.startswith(u) or u == "AUC" and u in
                             column for u in unsigned) else f"{v:+.3f}"
  return str(v)


def _table(records: list[dict], columns: list[str]) -> str:
  frame = pd.DataFrame(records)[columns].astype(object)
  for c in columns:
    frame[c] = [_fmt(v, c) for v in frame[c]]
  return frame.to_markdown(index=False, disable_numparse=True) + "\n"


STRATA_COLUMNS = ["stratum", "images with", "melanomas with", "left out",
                  "images reference", "D with", "D reference", "interaction",
                  "lo", "hi", "p", "p DeLong", "p Holm"]


def _ci(r: dict, key: str = "diff") -> str:
  return f"{r[key]:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]"


def _holds(r: dict, sign: int = 1) -> str:
  lo, hi = sorted((sign * r["lo"], sign * r["hi"]))
  return ("holds (CI excludes 0)" if lo > 0 else
          "reversed (CI excludes 0 the other way)" if hi < 0 else
          "not shown (CI includes 0)")


def verdicts(results: dict) -> list[str]:
  """One line per pre-registered hypothesis, read off the tables."""
  lines = []
  for split, name in splits_of(results).items():
    r = results[f"strata_{split}"]["rows"][0]
    lines.append(f"- **H1, {name}**: interaction {_ci(r, 'interaction')}, "
                 f"p {r['p']:.2g}: {_holds({**r, 'diff': r['interaction']})}"
                 f" (D with {r['D with']:+.3f}, D reference "
                 f"{r['D reference']:+.3f}).")
    family = [row for row in results[f"strata_{split}"]["rows"]
              if row["p Holm"] is not None]
    passed = [row["stratum"] for row in family if row["p Holm"] < 0.05]
    lines.append(f"- Secondary family, {name}: {len(passed)} of "
                 f"{len(family)} testable at Holm 0.05"
                 + (f" ({', '.join(passed)})." if passed else "."))
  if "versions" in results:
    bg = next(r for r in results["versions"]
              if r["version"] == "background_only")
    lines.append(f"- **H2** (RAP - control < 0 on background only): "
                 f"{_ci(bg)}: {_holds(bg, -1)}.")
    share, win = results["cam"]["share"], results["cam"]["leak_vs_win"]
    lines.append(f"- **H3** (RAP's CAM energy more inside the lesion): "
                 f"{_ci(share)}: {_holds(share)}.")
    lines.append(f"- **H4** (RAP wins where the control leaks): Spearman "
                 f"{win['spearman']:+.3f} [{win['lo']:+.3f}, {win['hi']:+.3f}]"
                 f": {_holds({**win, 'diff': win['spearman']})}.")
  if "trap" in results:
    top = max(results["trap"], key=lambda r: r["bias"])
    lines.append(f"- **H5** (RAP - control > 0 at b = {top['bias']}, "
                 f"{top['seeds']} seeds): {_ci(top)}: {_holds(top)}.")
  if "recipes" in results:
    d = results["recipes"]["difference"]
    lines.append(f"- Recipes, described and not tested (`HYPOTHESES.md`): "
                 f"the test-split interaction is {d['interaction recipe 1']:+.3f}"
                 f" with recipe 1 and {d['interaction recipe 2']:+.3f} with "
                 f"recipe 2; recipe 2 - recipe 1 {_ci(d)} (paired bootstrap).")
  return lines


def markdown(results: dict) -> str:
  """``results.md``: the verdicts and every table."""
  lines = ["# Where region pooling matters: RAP - GAP control by artefact, "
           f"image version and CAM energy ({title(results)})\n",
           "Hypotheses, statistics and the Holm family were fixed first: "
           f"`{'../' * (results['recipe name'] != 'recipe 1')}HYPOTHESES.md`."
           " D = fold-stratified paired AUC difference RAP - "
           "GAP control; interaction = D(with) - D(reference), 95% bootstrap "
           "CI (2,000 resamples within group x fold x label). Reference: "
           "annotated images with none of ruler, dark corner, ink, gel border, "
           "patches. Left out: the group's images in folds where it has "
           "fewer than 2 melanomas or 2 other lesions (a stratified AUC needs "
           "both).\n", "## Verdicts\n", *verdicts(results), ""]
  if "recipe" in results:
    lines += ["## The recipe (per run, averaged over runs)\n",
              _table([results["recipe"]], list(results["recipe"]))]
  for split, name in splits_of(results).items():
    part = results[f"strata_{split}"]
    lines += [f"## Strata, {name} ({part['images']} images, "
              f"{part['unannotated']} unannotated and left out; each image's "
              f"score averaged over {part['models per image']} models)\n",
              _table(part["rows"], STRATA_COLUMNS)]
  if "versions" in results:
    lines += [f"## Images with the lesion taken away (fold x seed runs "
              f"{results['runs']})\n",
              _table(results["versions"], ["version", "images", "melanomas",
                                           f"AUC {A}", f"AUC {B}", "diff",
                                           "lo", "hi", "p"]),
              "## CAM energy inside the lesion (whole images)\n",
              _table([results["cam"]["share"]], list(results["cam"]["share"])),
              _table([results["cam"]["leak_vs_win"]],
                     list(results["cam"]["leak_vs_win"]))]
  if "trap" in results:
    lines += ["## Trap sets (held-out fold, link reversed)\n",
              _table(results["trap"], list(results["trap"][0]))]
  if "recipes" in results:
    rows = results["recipes"]["rows"]
    columns = list(dict.fromkeys(c for r in rows for c in r))
    lines += ["## Two recipes (test split; recipe 2's tables: "
              f"`{RECIPE2}/results.md`)\n",
              "Two recipes differ in width, resolution and Step-4 length at "
              "once: this table cannot say which property matters, only "
              "whether the interaction differs between them.\n",
              _table(rows, columns),
              _table([results["recipes"]["difference"]],
                     list(results["recipes"]["difference"]))]
  return "\n".join(lines)


def figures(results: dict, out: str) -> None:
  """``strata.png`` (interaction by stratum with CIs), ``versions.png`` and
  ``trap.png`` where their results exist."""
  splits = splits_of(results)
  fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4),
                           sharey=True, squeeze=False)
  for ax, (split, name) in zip(axes[0], splits.items()):
    rows = [r for r in results[f"strata_{split}"]["rows"]
            if r["interaction"] is not None]
    y = np.arange(len(rows))
    est = np.array([r["interaction"] for r in rows])
    err = np.array([[r["interaction"] - r["lo"], r["hi"] - r["interaction"]]
                    for r in rows]).T
    ax.errorbar(est, y, xerr=err, fmt="o")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, [r["stratum"] for r in rows])
    ax.set_title(f"D(with) - D(reference), {name}", fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "strata.png"), dpi=110)
  plt.close(fig)
  for key, x_key, path in (("versions", "version", "versions.png"),
                           ("trap", "bias", "trap.png")):
    if key in results:
      _auc_plot(results[key], x_key, os.path.join(out, path))


def _auc_plot(records: list[dict], x_key: str, path: str) -> None:
  fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
  x = [str(r[x_key]) for r in records]
  for arm, colour in ((A, "C0"), (B, "C1")):
    left.plot(x, [r[f"AUC {arm}"] for r in records], "o-", color=colour,
              label=arm)
    if f"clean AUC {arm}" in records[0]:  # trap models on clean images
      left.plot(x, [r[f"clean AUC {arm}"] for r in records], "o--",
                color=colour, alpha=0.5, label=f"{arm}, no artefact")
  left.axhline(0.5, color="k", lw=0.8, ls=":")
  left.set_ylabel("AUC (seed-averaged)")
  left.legend()
  diff = np.array([r["diff"] for r in records])
  err = np.array([[r["diff"] - r["lo"], r["hi"] - r["diff"]] for r in records])
  right.errorbar(x, diff, yerr=err.T, fmt="o")
  right.axhline(0, color="k", lw=0.8)
  right.set_ylabel(f"{A} - {B} (95% CI)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(out: str, artefacts: str) -> dict:
  """Writes ``results.json``, ``results.md`` and figures of ``out`` (and of
  its recipe-2 subfolder first, where it has one)."""
  if os.path.exists(os.path.join(out, RECIPE2, "strata_scores.csv")):
    write(os.path.join(out, RECIPE2), artefacts)
  results = analyse(out, artefacts)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(markdown(results))
  figures(results, out)
  return results


def check(out: str, artefacts: str) -> int:
  """0 when ``results.json`` and ``results.md`` are what the CSVs give;
  else names each section or line that differs and returns 1."""
  sub = os.path.join(out, RECIPE2)
  failed = (check(sub, artefacts) if os.path.exists(
      os.path.join(sub, "strata_scores.csv")) else 0)
  results = analyse(out, artefacts)
  with open(os.path.join(out, "results.json")) as f:
    stored = json.load(f)
  bad = [k for k in results.keys() | stored.keys()
         if results.get(k) != stored.get(k)]
  with open(os.path.join(out, "results.md")) as f:
    md = f.read().splitlines()
  bad += [f"results.md line {i + 1}" for i, (a, b) in enumerate(
      zip(markdown(results).splitlines(), md)) if a != b]
  if len(md) != len(markdown(results).splitlines()):
    bad.append("results.md length")
  for item in bad:
    print(f"{out}: differs from its CSVs: {item}")
  print(f"check {out}: " + ("FAILED" if bad else "every figure recomputes"))
  return 1 if bad or failed else 0
