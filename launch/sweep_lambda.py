"""Table 1 of the paper: the segmentation weight lambda of Step 4 (validation).

    python -m launch.sweep_lambda --config configs/isic2017.py --workdir BASE \
        [--lambdas 0.01,0.1,1,5,7.5,10,12.5,15,20] [--gpus 0,1,2,3] \
        [-- --config.data.manual_dir=... --config.model.pretrained=...]

Steps 2-3 are trained once, in ``BASE/shared``; each ``BASE/lambda_<v>/``
links them and trains Step 4 with ``lambda_seg=<v>`` (launch/README.md,
"Shared stages"). Every run evaluates on the validation split, as the
paper's Table 1 does. Writes ``BASE/table1.md``, ``.json`` and ``.png``
(validation JA and AUC per lambda, beside the paper's). ``--smoke``:
``configs/tiny.py`` and two lambdas.
"""

from __future__ import annotations

import argparse
import os
import sys

from launch import aggregate
from launch import common
from launch import fanout

STAGE = "joint"  # the stage whose lambda_seg is swept; those before are shared
PAPER_GRID = (0.01, 0.1, 1, 5, 7.5, 10, 12.5, 15, 20)
SMOKE_GRID = (0.1, 7.5)
# Table 1 of Yang et al. 2018 (ISIC 2017 validation).
PAPER_JA = dict(zip(PAPER_GRID, (0.075, 0.401, 0.560, 0.635, 0.633, 0.628,
                                 0.638, 0.632, 0.626)))
PAPER_AUC = dict(zip(PAPER_GRID, (0.775, 0.818, 0.813, 0.860, 0.863, 0.859,
                                  0.851, 0.807, 0.806)))


def make_jobs(config: str, root: str, lambdas, overrides) -> list[fanout.Job]:
  """Prepare, the shared base and one Step-4 job per lambda."""
  cfg = common.load_config(config)
  shared = common.shared_stages(cfg, STAGE, overrides)
  run_overrides = list(overrides) + common.report_split_overrides(
      cfg, "validation")
  jobs = [fanout.prepare_job(root, config, overrides)]
  base = os.path.join(root, "shared")
  if shared:
    jobs.append(common.base_job("shared", base, config, run_overrides, shared,
                                {"role": "base", "stages": shared}))
  for v in lambdas:
    tag = common.value_tag(v)
    jobs.append(common.stage_job(
        f"lambda_{tag}", os.path.join(root, f"lambda_{tag}"), config,
        run_overrides + [f"--config.stages.{STAGE}.lambda_seg={tag}"], base,
        shared, {"lambda": float(v)}))
  return jobs


def build_table(root: str, jobs, rankopt_name: str = "") -> dict:
  """Reads the lambda runs; writes table1.md / .json / .png under ``root``."""
  runs = [aggregate.load_run(j.workdir, j.name, j.meta) for j in jobs
          if j.phase != fanout.PREPARE_PHASE]
  lam_runs = [r for r in runs if "lambda" in r.meta]
  entries = []
  for run in lam_runs:
    lam = run.meta["lambda"]
    step4 = run.row(STAGE) if run.state == "ok" else None
    ranked = (run.row(rankopt_name) if run.state == "ok" and rankopt_name
              else None)
    entries.append({
        "lambda": lam, "state": run.state, "workdir": run.workdir,
        "jaccard": step4.get("jaccard") if step4 else None,
        "auc": step4.get("auc") if step4 else None,
        "auc_rankopt": ranked.get("auc") if ranked else None,
        "paper_jaccard": PAPER_JA.get(lam), "paper_auc": PAPER_AUC.get(lam)})
  split, n = common.eval_split_of(lam_runs, "validation")
  header = ["λ"] + [common.value_tag(e["lambda"]) for e in entries]
  line = lambda label, key: [label] + [aggregate.fmt(e[key]) for e in entries]
  table = aggregate.markdown_table(header, [
      line("JA", "jaccard"), line("AUC", "auc"),
      line("AUC + RankOpt", "auc_rankopt"),
      line("paper JA", "paper_jaccard"), line("paper AUC", "paper_auc")])
  text = (f"# Table 1: lambda of Step 4 on `{split}`"
          f"{f' ({n} images)' if n else ''}\n\n"
          "JA and AUC of the Step-4 network (region pooling); AUC + RankOpt: "
          "RankOpt on its pooled features. Paper: Yang et al. 2018, Table 1 "
          "(ISIC 2017 validation).\n\n" + table + "\n" +
          aggregate.status_section(runs))
  common.write_table(root, "table1", text, {
      "eval_split": split, "num_eval_examples": n, "rows": entries})
  plot(os.path.join(root, "table1.png"), entries)
  return {"rows": entries, "markdown": text}


def plot(path: str, entries) -> None:
  tags = [common.value_tag(e["lambda"]) for e in entries]
  nan = lambda v: float("nan") if v is None else v  # noqa: E731
  with common.figure(path, figsize=(6, 3.8)) as (_, ax):
    xs = range(len(entries))  # the grid as categories: it spans 0.01 .. 20
    for key, paper_key, label, color in (
        ("jaccard", "paper_jaccard", "JA", "tab:blue"),
        ("auc", "paper_auc", "AUC", "tab:orange"),
        ("auc_rankopt", None, "AUC + RankOpt", "tab:green")):
      ax.plot(xs, [nan(e[key]) for e in entries], "o-", color=color,
              label=label)
      if paper_key:
        ax.plot(xs, [nan(e[paper_key]) for e in entries], "x--", color=color,
                alpha=0.6, label=f"paper {label}")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(tags)
    ax.set_xlabel("λ (Step 4 segmentation weight)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      usage="%(prog)s --config C --workdir BASE [options] "
            "[-- --config.a=b ...]")
  parser.add_argument("--config", default=None, help="configs/NAME.py[:arg]")
  parser.add_argument("--workdir", required=True,
                      help="BASE folder of the sweep")
  parser.add_argument("--lambdas", default="",
                      help="comma-separated (default: the paper's 9 values)")
  parser.add_argument("--smoke", action="store_true",
                      help=f"{common.TINY_CONFIG}, lambdas {SMOKE_GRID}")
  args, overrides = common.parse_args(parser, argv)
  config = common.resolve_config(args.config, args.smoke)
  if args.lambdas:
    lambdas = [float(v) for v in args.lambdas.split(",")]
  else:
    lambdas = SMOKE_GRID if args.smoke else PAPER_GRID
  root = os.path.abspath(args.workdir)
  jobs = make_jobs(config, root, lambdas, overrides)
  if fanout.execute(args, jobs, root):
    rankopt_name = common.load_config(config).rankopt.report_as
    table = build_table(root, jobs, rankopt_name)
    return int(any(e["state"] != "ok" for e in table["rows"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
