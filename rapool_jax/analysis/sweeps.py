"""Tables 1 and 2 of the paper from the sweeps' runs (``launch/sweep_lambda.py``
and ``launch/ablate_pooling.py``): markdown, JSON and a figure each."""

from __future__ import annotations

import json
import os

from rapool_jax.analysis import run_tables as rt
from rapool_jax.analysis import tables

# Table 1 of Yang et al. 2018 (ISIC 2017 validation): lambda -> JA, AUC.
PAPER_TABLE1 = {0.01: (0.075, 0.775), 0.1: (0.401, 0.818), 1: (0.560, 0.813),
                5: (0.635, 0.860), 7.5: (0.633, 0.863), 10: (0.628, 0.859),
                12.5: (0.638, 0.851), 15: (0.632, 0.807), 20: (0.626, 0.806)}
# Table 2 of Yang et al. 2018 (ISIC 2017 test): Sen, Spe, Acc, AUC.
PAPER_TABLE2 = (
    ("VGG", 0.325, 0.932, 0.813, 0.767),
    ("VGG + RAPooling", 0.325, 0.936, 0.817, 0.801),
    ("GoogLeNet", 0.444, 0.909, 0.818, 0.821),
    ("GoogLeNet + RAPooling", 0.436, 0.917, 0.823, 0.825),
    ("ResNet50", 0.334, 0.959, 0.837, 0.814),
    ("ResNet50 + RAPooling", 0.444, 0.923, 0.833, 0.838),
)
TABLE1_ROWS = (("JA", "jaccard"), ("AUC", "auc"),
               ("AUC + RankOpt", "auc_rankopt"), ("paper JA", "paper_jaccard"),
               ("paper AUC", "paper_auc"))
TABLE2_COLUMNS = ("sensitivity", "specificity", "accuracy", "auc", "jaccard")


def value_tag(v: float) -> str:
  """0.01 -> "0.01", 7.5 -> "7.5", 20.0 -> "20": folder names and labels."""
  return format(float(v), "g")


def eval_split_of(runs, default: str) -> tuple[str, int | None]:
  """The evaluation split and its size, from the first finished run."""
  for run in runs:
    if run.state == "ok":
      return run.results["eval_split"], run.results["num_eval_examples"]
  return default, None


def paper_table(rows) -> str:
  """The paper's (name, Sen, Spe, Acc, AUC) rows as a table."""
  return rt.markdown_table(
      ["paper (ISIC 2017 test)", "Sen", "Spe", "Acc", "AUC"],
      [[name] + [f"{v:.3f}" for v in vals] for name, *vals in rows])


def write_table(folder: str, stem: str, text: str, payload: dict) -> None:
  """``STEM.md`` (printed too) and ``STEM.json`` in ``folder``."""
  with open(os.path.join(folder, f"{stem}.md"), "w") as f:
    f.write(text)
  with open(os.path.join(folder, f"{stem}.json"), "w") as f:
    json.dump(payload, f, indent=1)
  print(text, flush=True)


def save(fig, path: str) -> None:
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  tables.plt.close(fig)


def table1_entry(run, stage: str, rankopt_name: str) -> dict:
  """A lambda run's Step-4 JA and AUC, RankOpt's AUC, and the paper's."""
  ok = run.state == "ok"
  step4 = (run.row(stage) if ok else None) or {}
  ranked = (run.row(rankopt_name) if ok and rankopt_name else None) or {}
  lam = run.meta["lambda"]
  paper = PAPER_TABLE1.get(lam, (None, None))
  return {"lambda": lam, "state": run.state, "workdir": run.workdir,
          "jaccard": step4.get("jaccard"), "auc": step4.get("auc"),
          "auc_rankopt": ranked.get("auc"),
          "paper_jaccard": paper[0], "paper_auc": paper[1]}


def table1(root: str, runs, stage: str, rankopt_name: str) -> dict:
  """Table 1 of the runs with a ``lambda``: ``root/table1.md/.json/.png``."""
  lam_runs = [r for r in runs if "lambda" in r.meta]
  entries = [table1_entry(r, stage, rankopt_name) for r in lam_runs]
  split, n = eval_split_of(lam_runs, "validation")
  table = rt.markdown_table(
      ["λ"] + [value_tag(e["lambda"]) for e in entries],
      [[label] + [rt.fmt(e[key]) for e in entries]
       for label, key in TABLE1_ROWS])
  text = (f"# Table 1: lambda of Step 4 on `{split}`"
          f"{f' ({n} images)' if n else ''}\n\n"
          "JA and AUC of the Step-4 network (region pooling); AUC + RankOpt: "
          "RankOpt on its pooled features. Paper: Yang et al. 2018, Table 1 "
          "(ISIC 2017 validation).\n\n" + table + "\n" +
          rt.status_section(runs))
  write_table(root, "table1", text, {
      "eval_split": split, "num_eval_examples": n, "rows": entries})
  plot_table1(os.path.join(root, "table1.png"), entries)
  return {"rows": entries, "markdown": text}


def plot_table1(path: str, entries) -> None:
  nan = lambda v: float("nan") if v is None else v  # noqa: E731
  fig, ax = tables.plt.subplots(figsize=(6, 3.8))
  xs = range(len(entries))  # the grid as categories: it spans 0.01 .. 20
  for key, label, color in (("jaccard", "JA", "tab:blue"),
                            ("auc", "AUC", "tab:orange"),
                            ("auc_rankopt", "AUC + RankOpt", "tab:green")):
    ax.plot(xs, [nan(e[key]) for e in entries], "o-", color=color, label=label)
    if key != "auc_rankopt":
      ax.plot(xs, [nan(e["paper_" + key]) for e in entries], "x--",
              color=color, alpha=0.6, label=f"paper {label}")
  ax.set_xticks(list(xs))
  ax.set_xticklabels([value_tag(e["lambda"]) for e in entries])
  ax.set_xlabel("λ (Step 4 segmentation weight)")
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, ncol=2)
  save(fig, path)


def _metric_lists(runs, row_name):
  """{metric: [value per run]} of the row ``row_name`` of finished runs."""
  rows = [r.row(row_name) for r in runs if r.state == "ok"]
  return {m: [r.get(m) for r in rows if r is not None] for m in rt.METRICS}


def _groups(runs, key: str):
  """``(value, runs)`` per value of ``meta[key]``, in order of appearance."""
  values = dict.fromkeys(r.meta[key] for r in runs if key in r.meta)
  return [(v, [r for r in runs if r.meta.get(key) == v]) for v in values]


def table2_entries(runs, stage: str, step2_name: str,
                   rankopt_name: str) -> list[dict]:
  """Per backbone: its bases' Step-2 rows (one per network-level variant),
  then each variant's Step-4 and RankOpt rows, values listed over seeds."""
  entries = []
  for backbone, mine in _groups(runs, "backbone"):
    bases = [r for r in mine if r.meta.get("role") == "base"]
    entries += [{"backbone": backbone,
                 "variant": f"Step 2 only (GAP){' ' + tag if tag else ''}",
                 "runs": len(group), "step4": _metric_lists(group, step2_name),
                 "rankopt": None} for tag, group in _groups(bases, "base_tag")]
    entries += [{"backbone": backbone, "variant": spec, "runs": len(group),
                 "step4": _metric_lists(group, stage),
                 "rankopt": _metric_lists(group, rankopt_name)}
                for spec, group in _groups(mine, "variant")]
  return entries


def table2_markdown(entries, runs) -> str:
  header = (["backbone", "variant"] + [rt.SHORT[c] for c in TABLE2_COLUMNS] +
            ["RankOpt AUC", "RankOpt Sen", "RankOpt Spe", "finished"])
  rows = [[e["backbone"], e["variant"]] +
          [rt.fmt_mean_std(e["step4"][c]) for c in TABLE2_COLUMNS] +
          ([rt.fmt_mean_std(e["rankopt"][c]) for c in
            ("auc", "sensitivity", "specificity")]
           if e["rankopt"] else ["-"] * 3) +
          [f"{sum(v is not None for v in e['step4']['auc'])}/{e['runs']}"]
          for e in entries]
  split, n = eval_split_of(runs, "?")
  return (f"# Table 2: pooling ablation on `{split}`"
          f"{f' ({n} images)' if n else ''}\n\n"
          "Mean ± sample std over seeds (one value: one seed). Variant rows: "
          "the Step-4 network; RankOpt columns: RankOpt on its pooled "
          "features. 'Step 2 only (GAP)': the shared base, before Steps "
          "3-4.\n\n" + rt.markdown_table(header, rows) + "\n" +
          paper_table(PAPER_TABLE2) + "\n" + rt.status_section(runs))


def table2(root: str, runs, stage: str, step2_name: str,
           rankopt_name: str) -> dict:
  """Mean ± std over seeds per (backbone, variant): ``root/table2.*``."""
  entries = table2_entries(runs, stage, step2_name, rankopt_name)
  text = table2_markdown(entries, runs)
  split, n = eval_split_of(runs, "?")
  write_table(root, "table2", text, {
      "eval_split": split, "num_eval_examples": n, "rows": entries})
  backbones = list(dict.fromkeys(r.meta["backbone"] for r in runs))
  fig, axes = tables.plt.subplots(2, len(backbones), squeeze=False,
                                  figsize=(max(4, 0.9 * len(entries)), 6))
  for col, backbone in enumerate(backbones):
    mine = [e for e in entries if e["backbone"] == backbone]
    _bars(axes[0, col], mine, "auc", "AUC", backbone)
    _bars(axes[1, col], mine, "jaccard", "JA", False)
  save(fig, os.path.join(root, "table2.png"))
  return {"rows": entries, "runs": runs, "markdown": text}


def _bars(ax, mine, metric: str, label: str, title) -> None:
  """Network and RankOpt bars (mean ± std) of one metric per variant."""
  xs = range(len(mine))
  for k, (key, name) in enumerate((("step4", "network"),
                                   ("rankopt", "+ RankOpt"))):
    if metric == "jaccard" and key == "rankopt":
      continue
    stats = [rt.mean_std(e[key][metric]) if e[key] else
             (float("nan"), 0.0, 0) for e in mine]
    ax.bar([x + (k - 0.5) * 0.4 for x in xs], [s[0] for s in stats], 0.4,
           yerr=[s[1] for s in stats], capsize=3, label=name)
  ax.set_ylabel(label)
  ax.set_ylim(0, 1)
  ax.set_xticks(list(xs))
  ax.set_xticklabels([] if title else [e["variant"] for e in mine],
                     rotation=45, ha="right", fontsize=7)
  if title:
    ax.set_title(title)
    ax.legend(fontsize=7)
