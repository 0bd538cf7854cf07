"""Markdown tables and figures of the reports.

``markdown_table`` writes a frame as the compact pipe table the committed
reports hold (``DataFrame.to_markdown`` pads every cell to its column's
width, which would rewrite every committed table); ``to_markdown`` is the
padded one for new reports. Cells are formatted by ``num``, ``pval``, ``ci``
and ``mean_sd_text`` first.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from rapool_jax import metrics  # noqa: E402


def num(x, digits: int = 3) -> str:
  """``x`` to ``digits`` decimals; "-" for None or NaN."""
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "-"
  return f"{x:.{digits}f}"


def pval(p) -> str:
  return "-" if p is None else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def ci(c: dict, lo: str = "lo", hi: str = "hi") -> str:
  """``[+lo, +hi]`` of a dict's two bounds, signed."""
  return f"[{c[lo]:+.3f}, {c[hi]:+.3f}]"


def auc_ci(c: dict) -> str:
  return f"{num(c['auc'])} [{num(c['lo'])}, {num(c['hi'])}]"


def mean_sd_text(m: dict) -> str:
  return num(m["mean"]) + ("" if m["sd"] is None else f" ± {m['sd']:.3f}")


def markdown_table(frame: pd.DataFrame) -> list[str]:
  """Lines of a pipe table of ``frame``'s cells (text), unpadded."""
  lines = ["| " + " | ".join(map(str, frame.columns)) + " |",
           "|" + "---|" * len(frame.columns)]
  return lines + ["| " + " | ".join(map(str, row)) + " |"
                  for row in frame.itertuples(index=False)]


def to_markdown(frame: pd.DataFrame, digits: int = 3) -> str:
  """A padded pipe table (``DataFrame.to_markdown``) for new reports."""
  return frame.to_markdown(index=False, floatfmt=f".{digits}f")


def sensitivity_lines(rows: Sequence[dict], intro: str) -> list[str]:
  """``intro`` and a table of ``paired.matched_sensitivity`` rows."""
  table = pd.DataFrame(
      [[s["name"], s["specificity"],
        f"{s['sens_a']:.3f} ({s['spe_a']:.3f})",
        f"{s['sens_b']:.3f} ({s['spe_b']:.3f})", f"{s['b']} / {s['c']}",
        s["why"] or pval(s["p"])] for s in rows],
      columns=["comparison", "target Spe", "Sen a (Spe a)", "Sen b (Spe b)",
               "a only / b only", "McNemar p"])
  return ["", intro, ""] + markdown_table(table)


def auc_diff_cells(c: dict | None) -> str:
  """ΔAUC, DeLong CI, p and bootstrap CI cells of ``paired.paired_auc``."""
  if c is None:
    return "- | - | - | -"
  return (f"{c['diff']:+.3f} | {ci(c)} | {pval(c['p'])} | "
          f"{ci(c, 'boot_lo', 'boot_hi')}")


def near_copy_diff_lines(comparisons) -> list[str]:
  """Paired differences with all images and without the near-copies."""
  header = ("| comparison | ΔAUC | DeLong 95% CI | p | bootstrap 95% CI | "
            "ΔAUC without near-copies | DeLong 95% CI | p | bootstrap 95% CI |")
  return [header, "|---" * 9 + "|"] + [
      f"| {c['name']} | {auc_diff_cells(c['all'])} | "
      f"{auc_diff_cells(c['without_near_copies'])} |" for c in comparisons]


def plot_roc(path: str, labels, scores: dict, title: str,
             specificities: Sequence[float] = ()) -> None:
  """ROC curves of ``scores`` (arm -> [N]) on ``labels`` [N], AUC in the
  legend, dashed lines at the target specificities."""
  fig, ax = plt.subplots(figsize=(6, 6))
  for arm, s in scores.items():
    fpr, tpr, _ = metrics.roc_curve(labels, s)
    ax.plot(fpr, tpr, label=f"{arm} ({metrics.roc_auc(labels, s):.3f})",
            lw=1.2)
  ax.plot([0, 1], [0, 1], "k:", lw=0.8)
  for spe in specificities:
    ax.axvline(1 - spe, color="grey", lw=0.6, ls="--")
  ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_bars(path: str, values: pd.DataFrame, ylabel: str) -> None:
  """Grouped bars: ``values`` [groups, series] (NaN: no bar), series in
  colour, groups along x."""
  fig, ax = plt.subplots(
      figsize=(max(5, 0.6 * len(values) * max(1, values.shape[1])), 4))
  width = 0.8 / max(1, values.shape[1])
  for k, series in enumerate(values.columns):
    ys = values[series].to_numpy(float)
    xs = np.arange(len(values)) + (k - (values.shape[1] - 1) / 2) * width
    keep = np.isfinite(ys)
    ax.bar(xs[keep], ys[keep], width, label=series)
  ax.set_xticks(range(len(values)))
  ax.set_xticklabels(values.index, rotation=45, ha="right", fontsize=8)
  ax.set_ylabel(ylabel)
  ax.set_ylim(0, 1)
  if values.shape[1]:
    ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
