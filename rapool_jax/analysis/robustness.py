"""Where region pooling matters: RAP against the GAP control by artefact
stratum, on images with the lesion taken away, by CAM energy inside the
lesion, and on trap sets (``results/robustness_isic2017/HYPOTHESES.md``).

Frames are pandas, one row per image and seed-averaged score columns per arm
(``wide``: ``image`` index, ``label``, ``fold``, then one column per arm),
averaged and compared with the library (``frames``, ``paired``). Every function is pure: the command
(``launch/robustness.py``) reads the CSVs and writes what these return.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as st

from rapool_jax import errors
from rapool_jax import stats
from rapool_jax.analysis import frames
from rapool_jax.analysis import paired

FLAGS = ("dark_corner", "hair", "gel_border", "gel_bubble", "ruler", "ink",
         "patches")
# Artefacts that lie outside the lesion (the primary hypothesis's); hair and
# gel bubbles lie on it as often as off it.
OUTSIDE = ("ruler", "dark_corner", "ink", "gel_border", "patches")
N_RESAMPLES = 2000


def read_artefacts(path: str, known_ids=None, split: str = "") -> pd.DataFrame:
  """The artefact flags, ``image_id`` index, a 0/1 column per ``FLAGS``;
  missing columns, or ids outside ``known_ids`` (among the rows of ``split``
  only, where given and the CSV has a ``split`` column), are one-line
  errors."""
  flags = pd.read_csv(path, dtype={"image_id": str})
  missing = [c for c in ("image_id", *FLAGS) if c not in flags.columns]
  if missing:
    raise errors.UserError(f"{path}: missing column(s) {', '.join(missing)}")
  if flags.image_id.duplicated().any():
    raise errors.UserError(f"{path}: image_id "
                           f"{flags.image_id[flags.image_id.duplicated()].iloc[0]}"
                           " appears twice")
  if known_ids is not None:
    rows = (flags[flags.split == split] if split and "split" in flags.columns
            else flags)
    unknown = sorted(set(rows.image_id) - set(known_ids))
    if unknown:
      raise errors.UserError(f"{path}: {len(unknown)} image id(s) not in the "
                             f"scored images, e.g. {unknown[0]}")
  return flags.set_index("image_id")[list(FLAGS)].astype(int)


def seed_average(rows: pd.DataFrame, arms: Sequence[str]) -> pd.DataFrame:
  """``rows`` (a row per image x model: ``image, label, fold`` and a column
  per arm) -> ``wide`` [images]: each arm averaged over an image's models
  (``frames.average_wide``), ``image`` the index."""
  missing = [arm for arm in arms if arm not in rows.columns]
  if missing:
    raise errors.UserError(f"scores have no column for arm {missing[0]!r}")
  wide = frames.average_wide(rows[["image", "label", "fold", *arms]],
                             ["image", "label", "fold"], keep=("label", "fold"))
  return wide.set_index("image")


def strata(flags: pd.DataFrame) -> dict[str, tuple[pd.Series, pd.Series]]:
  """The hypotheses' groups: ``{name: (with, reference)}`` boolean Series on
  the annotated images; the reference is always "none of ``OUTSIDE``"."""
  count = flags[list(OUTSIDE)].sum(axis=1)
  none = count == 0
  out = {"any outside-lesion artefact": (count >= 1, none)}
  out.update({a: (flags[a] == 1, none) for a in OUTSIDE})
  out["two or more"] = (count >= 2, none)
  out.update({f"{a} (descriptive)": (flags[a] == 1, flags[a] == 0)
              for a in ("hair", "gel_bubble")})
  return out


def usable_folds(wide: pd.DataFrame) -> pd.Series:
  """``[N]`` bool: images whose fold has >= 2 melanomas and >= 2 others in
  ``wide`` (a stratified AUC needs both in every fold)."""
  counts = wide.groupby("fold").label.agg(["sum", "count"])
  ok = (counts["sum"] >= 2) & (counts["count"] - counts["sum"] >= 2)
  return wide.fold.map(ok).astype(bool)


def paired_difference(wide: pd.DataFrame, a: str, b: str) -> dict:
  """Fold-stratified paired ``auc_a - auc_b`` (``paired.compare``: DeLong,
  and the bootstrap beside it) on ``wide``'s usable folds, with the image
  and melanoma counts used and left out."""
  use = usable_folds(wide)
  w = wide[use]
  row = {"images": int(use.sum()), "melanomas": int(w.label.sum()),
         "left_out": int((~use).sum())}
  if not len(w):
    return {**row, **dict.fromkeys(("auc_a", "auc_b", "diff", "lo", "hi",
                                    "p"), np.nan)}
  r = paired.compare(_long(w, a, b), a, b, within="fold")
  return {**row, **{k: r[k] for k in ("auc_a", "auc_b", "diff", "lo", "hi",
                                      "p")}}


def _long(wide: pd.DataFrame, *arms: str, extra=()) -> pd.DataFrame:
  return frames.tidy(wide.reset_index()[["image", "label", "fold", *extra,
                                         *arms]],
                     ["image", "label", "fold", *extra])


def interaction(wide: pd.DataFrame, with_: pd.Series, reference: pd.Series,
                a: str, b: str, seed: int = 0) -> dict:
  """H1's statistic on one pair of groups: D(with) - D(reference), D =
  ``paired_difference``, each group on its usable folds
  (``paired.interaction``: resampled within group x fold x label)."""
  known = wide.index.intersection(with_.index)
  w_in = wide.loc[known[with_.loc[known].to_numpy()]]
  w_ref = wide.loc[known[reference.loc[known].to_numpy()]]
  row = {"images": len(w_in), "melanomas": int(w_in.label.sum())}
  w_in, w_ref = w_in[usable_folds(w_in)], w_ref[usable_folds(w_ref)]
  row |= {"with": paired_difference(w_in, a, b),
          "reference": paired_difference(w_ref, a, b)}
  if not (len(w_in) and len(w_ref)):
    return {**row, **dict.fromkeys(("diff", "lo", "hi", "p", "p_delong"),
                                   np.nan)}
  both = pd.concat([w_in.assign(group=1), w_ref.assign(group=0)])
  r = paired.interaction(_long(both, a, b, extra=("group",)), a, b, "group",
                         n_resamples=N_RESAMPLES, seed=seed)
  return {**row, **{k: r[k] for k in ("diff", "lo", "hi", "p", "p_delong")}}


def strata_table(wide: pd.DataFrame, flags: pd.DataFrame, a: str, b: str,
                 seed: int = 0) -> pd.DataFrame:
  """A row per ``strata`` entry: counts, D(with), D(reference), the
  interaction with its CI and p, and Holm's p over the pre-registered family
  (the five artefacts and "two or more")."""
  rows = []
  for k, (name, (with_, ref)) in enumerate(strata(flags).items()):
    r = interaction(wide, with_, ref, a, b, seed=seed + 10 * k)
    rows.append({"stratum": name,
                 "images with": r["images"],
                 "melanomas with": r["melanomas"],
                 "left out": r["images"] - r["with"]["images"],
                 "images reference": r["reference"]["images"],
                 "D with": r["with"]["diff"], "D with lo": r["with"]["lo"],
                 "D with hi": r["with"]["hi"],
                 "D reference": r["reference"]["diff"],
                 "interaction": r["diff"], "lo": r["lo"], "hi": r["hi"],
                 "p": r["p"], "p DeLong": r["p_delong"]})
  table = pd.DataFrame(rows).set_index("stratum")
  family = [s for s in table.index if s in OUTSIDE or s == "two or more"]
  tested = [s for s in family if np.isfinite(table.loc[s, "p"])]
  table["p Holm"] = np.nan
  table.loc[tested, "p Holm"] = stats.holm(table.loc[tested, "p"].to_numpy())
  return table


def versions_table(frame: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
  """A row per image version: each arm's fold-stratified AUC and the paired
  ``a - b`` difference, scores seed-averaged (``frame``: a row per image x
  seed x version, ``version`` and a score column per arm)."""
  rows = []
  for version, part in frame.groupby("version", sort=False):
    wide = seed_average(part, (a, b))
    rows.append({"version": version, **paired_difference(wide, a, b)})
  return pd.DataFrame(rows).set_index("version").rename(
      columns={"auc_a": f"AUC {a}", "auc_b": f"AUC {b}"})


def placement_values(wide: pd.DataFrame, arm: str) -> pd.Series:
  """``[N]`` how well each image is ranked within its fold: for a melanoma
  the share of the fold's other lesions scored below it, for another lesion
  the share of the fold's melanomas scored above it (ties 1/2). Their mean
  over a class is the fold's AUC."""
  out = pd.Series(np.nan, index=wide.index)
  for _, part in wide.groupby("fold"):
    s, y = part[arm].to_numpy(), part.label.to_numpy().astype(bool)
    pos, neg = s[y], s[~y]
    below = (neg[None, :] < pos[:, None]).mean(1) + 0.5 * (
        neg[None, :] == pos[:, None]).mean(1)
    above = (pos[None, :] > neg[:, None]).mean(1) + 0.5 * (
        pos[None, :] == neg[:, None]).mean(1)
    out.loc[part.index[y]] = below
    out.loc[part.index[~y]] = above
  return out


def _bootstrap_mean_ci(x: np.ndarray, seed: int) -> tuple[float, float]:
  rng = np.random.default_rng(seed)
  means = x[rng.integers(0, len(x), (N_RESAMPLES, len(x)))].mean(1)
  return tuple(np.percentile(means, [2.5, 97.5]))


def cam_tables(frame: pd.DataFrame, a: str, b: str, seed: int = 0) -> dict:
  """H3 and H4 on the whole images: each arm's mean share of CAM energy
  inside the lesion, the paired mean difference with a bootstrap CI, and the
  Spearman correlation of the control's leak (1 - share) with ``a``'s
  per-image advantage in placement value (bootstrap CI)."""
  whole = frame[frame.version == "whole"]
  scores = seed_average(whole, (a, b))
  energy = whole.groupby("image")[[f"cam {a}", f"cam {b}"]].mean()
  energy = energy.loc[scores.index].dropna()
  diff = (energy[f"cam {a}"] - energy[f"cam {b}"]).to_numpy()
  lo, hi = _bootstrap_mean_ci(diff, seed)
  share = {"images": len(energy), f"mean {a}": energy[f"cam {a}"].mean(),
           f"mean {b}": energy[f"cam {b}"].mean(), "diff": diff.mean(),
           "lo": lo, "hi": hi, "p Wilcoxon": st.wilcoxon(diff).pvalue}
  advantage = (placement_values(scores, a) - placement_values(scores, b))
  leak = 1 - energy[f"cam {b}"]
  adv = advantage.loc[leak.index].to_numpy()
  rho = st.spearmanr(leak, adv).statistic
  rng = np.random.default_rng(seed + 1)
  boots = [st.spearmanr(leak.to_numpy()[i], adv[i]).statistic
           for i in rng.integers(0, len(adv), (N_RESAMPLES // 4, len(adv)))]
  high = leak > leak.median()
  win = {"images": len(adv), "spearman": rho,
         "lo": np.percentile(boots, 2.5), "hi": np.percentile(boots, 97.5),
         "advantage, control leaks most": adv[high.to_numpy()].mean(),
         "advantage, control leaks least": adv[~high.to_numpy()].mean()}
  return {"share": share, "leak_vs_win": win}


def trap_table(frame: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
  """A row per bias level: seeds, each arm's AUC on the held-out fold (link
  reversed) and on the same images clean, seed-averaged, and the paired
  ``a - b`` (DeLong); ``frame``: a row per image x seed with ``bias``, a
  score column per arm and ``clean <arm>``."""
  rows = []
  for bias, part in frame.groupby("bias"):
    wide = seed_average(part, (a, b))
    clean = seed_average(part.drop(columns=[a, b]).rename(
        columns={f"clean {a}": a, f"clean {b}": b}), (a, b))
    per_seed = part.groupby("seed").apply(
        lambda s: pd.Series({arm: stats.auc_ci(s.label, s[arm])["auc"]
                             for arm in (a, b)}), include_groups=False)
    rows.append({"bias": bias, "seeds": part.seed.nunique(),
                 f"{a} per seed": " / ".join(f"{v:.3f}" for v in per_seed[a]),
                 f"{b} per seed": " / ".join(f"{v:.3f}" for v in per_seed[b]),
                 **paired_difference(wide, a, b)})
    d = paired_difference(clean, a, b)
    rows[-1].update({f"clean AUC {a}": d["auc_a"], f"clean AUC {b}": d["auc_b"],
                     "clean diff": d["diff"], "clean lo": d["lo"],
                     "clean hi": d["hi"]})
  return pd.DataFrame(rows).set_index("bias").rename(
      columns={"auc_a": f"AUC {a}", "auc_b": f"AUC {b}"})


def recipe_properties(runs: pd.DataFrame) -> dict:
  """A recipe's settings (one value each, or every value joined by "/")
  and its segmentation's Jaccard, mean and SD over ``runs`` (``runs.csv``:
  a row per run)."""
  def one(column):
    values = runs[column].unique()
    return values.tolist()[0] if len(values) == 1 else " / ".join(
        map(str, sorted(values)))
  return {"runs": len(runs), "seeds": int(runs.seed.nunique()),
          **{c: one(c) for c in ("depth", "width", "crop px", "Step-4 steps")},
          "Jaccard RAP": runs["Jaccard RAP"].mean(),
          "Jaccard RAP SD": runs["Jaccard RAP"].std(ddof=1)}


def recipe_difference(wide_1: pd.DataFrame, wide_2: pd.DataFrame,
                      flags: pd.DataFrame, a: str, b: str,
                      seed: int = 0) -> dict:
  """Recipe 2's primary interaction minus recipe 1's on the same images
  (``wide_*``: ``image`` index, ``label``, ``fold`` and both arms): both
  from the same bootstrap resamples, so the difference is paired."""
  with_, ref = strata(flags)["any outside-lesion artefact"]
  if set(wide_1.index) != set(wide_2.index):
    raise errors.UserError("the two recipes scored different images")
  parts = []
  for wide in (wide_1, wide_2):
    groups = [wide.loc[wide.index.intersection(g.index[g])].sort_index()
              for g in (with_, ref)]
    groups = [g[usable_folds(g)] for g in groups]
    w = pd.concat([groups[0].assign(group=True),
                   groups[1].assign(group=False)])
    parts.append(stats.interaction_bootstrap(
        w.label.to_numpy(), w[a].to_numpy(), w[b].to_numpy(),
        w.group.to_numpy(), w.fold.to_numpy(), n_resamples=N_RESAMPLES,
        seed=seed, replicates=True))
  reps = parts[1]["replicates"] - parts[0]["replicates"]
  diff = parts[1]["diff"] - parts[0]["diff"]
  # A CI, no p: HYPOTHESES.md describes the recipes, it does not test them.
  return {"interaction recipe 1": parts[0]["diff"],
          "interaction recipe 2": parts[1]["diff"], "diff": diff,
          "lo": float(np.percentile(reps, 2.5)),
          "hi": float(np.percentile(reps, 97.5))}
