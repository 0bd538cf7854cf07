"""Table 2 and beyond: GAP vs region pooling variants, per backbone and seed.

    python -m launch.ablate_pooling --config configs/isic2017.py --workdir OUT \
        --backbones resnet18,resnet50 --seeds 0,1,2 \
        [--variants gap,region,region_normalized,mask_oracle,os16] \
        [--gpus 0,1,2,3] [-- --config.data.manual_dir=... ]

A variant changes Step 4 (``stages.joint.*``) or the whole network (``os16``:
output stride 16; ``bilinear``: fixed bilinear upsampling); ``os16+gap``
combines two. Runs that differ only in Step 4 share one base per (backbone,
seed, network-level variants) in ``OUT/bases/``, linked into each
``OUT/runs/<backbone>/<variant>/seed<s>/``. The base's Step-2 row is the
paper's plain "GAP network"; the ``gap`` variant is the fairer baseline (same
Steps 3-4, GAP instead of region pooling). Writes ``OUT/table2.md``,
``.json`` (mean ± sample std over seeds) and ``.png``. ``--smoke``:
``configs/tiny.py``, variants gap and region, seed 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from launch import aggregate
from launch import common
from launch import fanout

STAGE = "joint"


@dataclasses.dataclass(frozen=True)
class Variant:
  """Overrides of the shared stages' network (``base``) and of Step 4."""

  base: tuple[str, ...] = ()
  step4: tuple[str, ...] = ()


def _pooling(name: str) -> Variant:
  return Variant(step4=(f"--config.stages.{STAGE}.pooling={name}",
                        f"--config.stages.{STAGE}.report_as=Step 4: {name}"))


VARIANTS = {
    "region": Variant(),
    "gap": _pooling("gap"),
    "region_normalized": _pooling("region_normalized"),
    "region_stop_gradient": _pooling("region_stop_gradient"),
    "region_normalized_stop_gradient": _pooling(
        "region_normalized_stop_gradient"),
    "mask_oracle": _pooling("mask_oracle"),
    "os8": Variant(base=("--config.model.output_stride=8",)),
    "os16": Variant(base=("--config.model.output_stride=16",)),
    "os32": Variant(base=("--config.model.output_stride=32",)),
    "bilinear": Variant(base=("--config.model.upsample=bilinear",)),
}
DEFAULT_VARIANTS = ("gap", "region", "region_normalized",
                    "region_stop_gradient", "mask_oracle", "os16")

# Backbone name -> overrides. "config": the config file's own backbone.
BACKBONES = {
    "config": (),
    "resnet18": ("--config.model.depth=18",),
    "resnet34": ("--config.model.depth=34",),
    "resnet50": ("--config.model.depth=50",),
    "resnet101": ("--config.model.depth=101",),
    # torchvision vgg16 (no BatchNorm, the paper's era) and vgg16_bn.
    "vgg16": ("--config.model.backbone=vgg16",
              "--config.model.batch_norm=False"),
    "vgg16_bn": ("--config.model.backbone=vgg16",
                 "--config.model.batch_norm=True"),
}

# Table 2 of Yang et al. 2018 (ISIC 2017 test): Sen, Spe, Acc, AUC.
PAPER_TABLE2 = (
    ("VGG", 0.325, 0.932, 0.813, 0.767),
    ("VGG + RAPooling", 0.325, 0.936, 0.817, 0.801),
    ("GoogLeNet", 0.444, 0.909, 0.818, 0.821),
    ("GoogLeNet + RAPooling", 0.436, 0.917, 0.823, 0.825),
    ("ResNet50", 0.334, 0.959, 0.837, 0.814),
    ("ResNet50 + RAPooling", 0.444, 0.923, 0.833, 0.838),
)


def parse_variant(spec: str) -> Variant:
  """``"os16+gap"`` -> the union of both variants' overrides."""
  base, step4 = [], []
  for name in spec.split("+"):
    if name not in VARIANTS:
      raise SystemExit(f"unknown variant {name!r}; choose from "
                       f"{sorted(VARIANTS)} (combine with '+')")
    base += VARIANTS[name].base
    step4 += VARIANTS[name].step4
  return Variant(tuple(base), tuple(step4))


def base_tag(variant: Variant) -> str:
  """Folder tag of the network-level variants ("" for the config's own)."""
  names = [n for n, v in VARIANTS.items()
           if v.base and set(v.base) <= set(variant.base)]
  return "+".join(sorted(names))


def make_jobs(config: str, root: str, backbones, variants, seeds, overrides,
              pretrained: dict[str, str]) -> list[fanout.Job]:
  cfg = common.load_config(config)
  shared = common.shared_stages(cfg, STAGE, overrides)
  unknown = sorted(set(backbones) - set(BACKBONES))
  if unknown:
    raise SystemExit(f"unknown backbone {unknown[0]!r}; choose from "
                     f"{sorted(BACKBONES)}")
  jobs, bases = [fanout.prepare_job(root, config, overrides)], {}
  for backbone in backbones:
    net = list(BACKBONES[backbone]) + (
        [f"--config.model.pretrained={pretrained[backbone]}"]
        if backbone in pretrained else [])
    for seed in seeds:
      for spec in variants:
        variant = parse_variant(spec)
        tag = base_tag(variant)
        group = f"{backbone}{'_' + tag if tag else ''}_seed{seed}"
        run_overrides = (list(overrides) + net + list(variant.base) +
                         [f"--config.seed={seed}"])
        meta = {"backbone": backbone, "seed": seed, "base_tag": tag}
        if shared and group not in bases:
          bases[group] = os.path.join(root, "bases", group)
          jobs.append(common.base_job(f"base_{group}", bases[group], config,
                                      run_overrides, shared,
                                      {**meta, "role": "base"}))
        jobs.append(common.stage_job(
            f"{backbone}_{spec}_seed{seed}",
            os.path.join(root, "runs", backbone, spec, f"seed{seed}"), config,
            run_overrides + list(variant.step4), bases.get(group, ""), shared,
            {**meta, "variant": spec}))
  return jobs


def _metric_lists(runs, row_name):
  """{metric: [value per run]} of the row ``row_name`` of finished runs."""
  out = {m: [] for m in aggregate.METRICS}
  for run in runs:
    row = run.row(row_name) if run.state == "ok" else None
    if row is not None:
      for m in aggregate.METRICS:
        out[m].append(row.get(m))
  return out


def table_entries(runs, step2_name: str, rankopt_name: str) -> list[dict]:
  """Per backbone: its bases' Step-2 rows (one per network-level variant),
  then each variant's Step-4 and RankOpt rows, values listed over seeds."""
  entries = []
  for backbone in dict.fromkeys(r.meta["backbone"] for r in runs):
    mine = [r for r in runs if r.meta["backbone"] == backbone]
    bases = [r for r in mine if r.meta.get("role") == "base"]
    for tag in dict.fromkeys(r.meta["base_tag"] for r in bases):
      group = [r for r in bases if r.meta["base_tag"] == tag]
      entries.append({"backbone": backbone,
                      "variant": f"Step 2 only (GAP){' ' + tag if tag else ''}",
                      "runs": len(group),
                      "step4": _metric_lists(group, step2_name),
                      "rankopt": None})
    for spec in dict.fromkeys(r.meta["variant"] for r in mine
                              if "variant" in r.meta):
      group = [r for r in mine if r.meta.get("variant") == spec]
      entries.append({"backbone": backbone, "variant": spec, "runs": len(group),
                      "step4": _metric_lists(group, STAGE),
                      "rankopt": _metric_lists(group, rankopt_name)})
  return entries


def markdown(entries, runs) -> str:
  cols = ["sensitivity", "specificity", "accuracy", "auc", "jaccard"]
  header = (["backbone", "variant"] + [aggregate.SHORT[c] for c in cols] +
            ["RankOpt AUC", "RankOpt Sen", "RankOpt Spe", "finished"])
  rows = []
  for e in entries:
    s4, ro = e["step4"], e["rankopt"]
    n_ok = len([v for v in s4["auc"] if v is not None])
    rows.append([e["backbone"], e["variant"]] +
                [aggregate.fmt_mean_std(s4[c]) for c in cols] +
                ([aggregate.fmt_mean_std(ro[c]) for c in
                  ("auc", "sensitivity", "specificity")] if ro else ["-"] * 3) +
                [f"{n_ok}/{e['runs']}"])
  split, n = common.eval_split_of(runs, "?")
  paper = aggregate.markdown_table(
      ["paper (ISIC 2017 test)", "Sen", "Spe", "Acc", "AUC"],
      [[name] + [f"{v:.3f}" for v in vals] for name, *vals in PAPER_TABLE2])
  return (f"# Table 2: pooling ablation on `{split}`"
          f"{f' ({n} images)' if n else ''}\n\n"
          "Mean ± sample std over seeds (one value: one seed). Variant rows: "
          "the Step-4 network; RankOpt columns: RankOpt on its pooled "
          "features. 'Step 2 only (GAP)': the shared base, before Steps "
          "3-4.\n\n"
          + aggregate.markdown_table(header, rows) + "\n" + paper + "\n" +
          aggregate.status_section(runs))


def build_table(root: str, jobs, step2_name: str, rankopt_name: str) -> dict:
  """Mean ± std over seeds per (backbone, variant); writes table2.*."""
  runs = [aggregate.load_run(j.workdir, j.name, j.meta, j.done_file)
          for j in jobs if j.phase != fanout.PREPARE_PHASE]
  entries = table_entries(runs, step2_name, rankopt_name)
  text = markdown(entries, runs)
  split, n = common.eval_split_of(runs, "?")
  common.write_table(root, "table2", text, {
      "eval_split": split, "num_eval_examples": n, "rows": entries})
  plot(os.path.join(root, "table2.png"), entries,
       list(dict.fromkeys(r.meta["backbone"] for r in runs)))
  return {"rows": entries, "runs": runs, "markdown": text}


def plot(path: str, entries, backbones) -> None:
  with common.figure(path, 2, len(backbones), squeeze=False,
                     figsize=(max(4, 0.9 * len(entries)), 6)) as (_, axes):
    for col, backbone in enumerate(backbones):
      mine = [e for e in entries if e["backbone"] == backbone]
      for row, (metric, label) in enumerate((("auc", "AUC"),
                                             ("jaccard", "JA"))):
        _bars(axes[row, col], mine, metric, label, row == 0 and backbone)


def _bars(ax, mine, metric: str, label: str, title) -> None:
  """Network and RankOpt bars (mean ± std) of one metric per variant."""
  xs = range(len(mine))
  for k, (key, name) in enumerate((("step4", "network"),
                                   ("rankopt", "+ RankOpt"))):
    if metric == "jaccard" and key == "rankopt":
      continue
    stats = [aggregate.mean_std(e[key][metric]) if e[key] else
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


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      usage="%(prog)s --config C --workdir OUT [options] [-- --config.a=b ...]")
  parser.add_argument("--config", default=None, help="configs/NAME.py[:arg]")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--backbones", default="config",
                      help=f"comma-separated, from {sorted(BACKBONES)}")
  parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                      help=f"comma-separated, from {sorted(VARIANTS)}; "
                           "combine with '+'")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--pretrained", action="append", default=[],
                      metavar="BACKBONE=PATH",
                      help="ImageNet weights per backbone; repeatable")
  parser.add_argument("--eval-split", default="",
                      help="evaluation split (default: the config's)")
  parser.add_argument("--smoke", action="store_true",
                      help=f"{common.TINY_CONFIG}, variants gap,region, seed 0")
  args, overrides = common.parse_args(parser, argv)
  config = common.resolve_config(args.config, args.smoke)
  backbones = args.backbones.split(",")
  variants = ["gap", "region"] if args.smoke else args.variants.split(",")
  seeds = [0] if args.smoke else [int(s) for s in args.seeds.split(",")]
  pretrained = dict(p.split("=", 1) for p in args.pretrained)
  if args.eval_split:
    overrides = overrides + common.report_split_overrides(
        common.load_config(config), args.eval_split)
  root = os.path.abspath(args.workdir)
  jobs = make_jobs(config, root, backbones, variants, seeds, overrides,
                   pretrained)
  if fanout.execute(args, jobs, root):
    cfg = common.load_config(config)
    step2 = cfg.stages[cfg.stage_order[0]].report_as or cfg.stage_order[0]
    table = build_table(root, jobs, step2, cfg.rankopt.report_as)
    return int(any(r.state != "ok" for r in table["runs"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
