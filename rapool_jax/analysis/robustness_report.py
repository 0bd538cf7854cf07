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
  flags = rb.read_artefacts(artefacts, known_ids=scores.image)
  results = {}
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
  return json.loads(json.dumps(results))  # the floats exactly as stored


def _fmt(v, column: str) -> str:
  if v is None or (isinstance(v, float) and np.isnan(v)):
    return "-"
  if isinstance(v, float) and column.startswith("p"):
    return f"{v:.2g}" if v < 0.001 else f"{v:.3f}"
  if isinstance(v, float) and column == "bias":
    return f"{v:g}"
  if isinstance(v, float):
    return f"{v:.3f}" if "AUC" in column or column.startswith("mean") else (
        f"{v:+.3f}")
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
  for split, name in SPLITS.items():
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
  return lines


def markdown(results: dict) -> str:
  """``results.md``: the verdicts and every table."""
  lines = ["# Where region pooling matters: RAP - GAP control by artefact, "
           "image version and CAM energy (recipe 1, the CV's)\n",
           "Hypotheses, statistics and the Holm family were fixed first: "
           "`HYPOTHESES.md`. D = fold-stratified paired AUC difference RAP - "
           "GAP control; interaction = D(with) - D(reference), 95% bootstrap "
           "CI (2,000 resamples within group x fold x label). Reference: "
           "annotated images with none of ruler, dark corner, ink, gel border, "
           "patches. Left out: the group's images in folds where it has "
           "fewer than 2 melanomas or 2 other lesions (a stratified AUC needs "
           "both).\n", "## Verdicts\n", *verdicts(results), ""]
  for split, name in SPLITS.items():
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
  return "\n".join(lines)


def figures(results: dict, out: str) -> None:
  """``strata.png`` (interaction by stratum with CIs), ``versions.png`` and
  ``trap.png`` where their results exist."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for ax, (split, name) in zip(axes, SPLITS.items()):
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
    print(f"differs from its CSVs: {item}")
  print("check: " + ("FAILED" if bad else "every figure recomputes"))
  return 1 if bad else 0
