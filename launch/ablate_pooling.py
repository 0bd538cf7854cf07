"""Table 2 and beyond: GAP vs region pooling variants, per backbone and seed.

    python -m launch.ablate_pooling --config configs/isic2017.py --workdir OUT \
        --backbones resnet18,resnet50 --seeds 0,1,2 [--variants gap,os16+gap]

A variant changes Step 4 (``stages.joint.*``) or the network (``os16``,
``bilinear``); ``+`` combines. Step-4 runs share a base per (backbone, seed,
network-level variants) in ``OUT/bases/``; ``OUT/runs/<backbone>/<variant>/
seed<s>/`` -> ``OUT/table2.md/.json/.png`` (mean ± sample std over seeds).
"""

from __future__ import annotations

import dataclasses
import os
import sys

from launch import common
from launch import fanout
from rapool_jax.analysis import sweeps
from rapool_jax import errors

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
    **{p: _pooling(p) for p in (
        "gap", "region_normalized", "region_stop_gradient",
        "region_normalized_stop_gradient", "mask_oracle")},
    **{f"os{s}": Variant(base=(f"--config.model.output_stride={s}",))
       for s in (8, 16, 32)},
    "bilinear": Variant(base=("--config.model.upsample=bilinear",)),
}
DEFAULT_VARIANTS = ("gap", "region", "region_normalized",
                    "region_stop_gradient", "mask_oracle", "os16")
# Backbone name -> overrides. "config": the config file's own backbone;
# torchvision vgg16 (no BatchNorm, the paper's era) and vgg16_bn.
BACKBONES = {
    "config": (),
    **{f"resnet{d}": (f"--config.model.depth={d}",) for d in (18, 34, 50, 101)},
    **{name: ("--config.model.backbone=vgg16",
              f"--config.model.batch_norm={bn}")
       for name, bn in (("vgg16", False), ("vgg16_bn", True))},
}


def parse_variant(spec: str) -> Variant:
  """``"os16+gap"`` -> the union of both variants' overrides."""
  unknown = [n for n in spec.split("+") if n not in VARIANTS]
  if unknown:
    raise SystemExit(f"unknown variant {unknown[0]!r}; choose from "
                     f"{sorted(VARIANTS)} (combine with '+')")
  parts = [VARIANTS[n] for n in spec.split("+")]
  return Variant(sum((v.base for v in parts), ()),
                 sum((v.step4 for v in parts), ()))


def base_tag(variant: Variant) -> str:
  """Folder tag of the network-level variants ("" for the config's own)."""
  return "+".join(sorted(n for n, v in VARIANTS.items()
                         if v.base and set(v.base) <= set(variant.base)))


def make_jobs(config: str, root: str, backbones, variants, seeds, overrides,
              pretrained: dict[str, str]) -> list[fanout.Job]:
  shared = common.shared_stages(common.load_config(config), STAGE, overrides)
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


def _parser():
  parser = common.parser(
      __doc__, f"{common.TINY_CONFIG}, variants gap,region, seed 0")
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
  return parser


def main(argv=None) -> int:
  args, overrides = common.parse_args(_parser(), argv)
  config = common.resolve_config(args.config, args.smoke)
  cfg = common.load_config(config)
  if args.eval_split:
    overrides = overrides + common.report_split_overrides(cfg, args.eval_split)
  root = os.path.abspath(args.workdir)
  jobs = make_jobs(
      config, root, args.backbones.split(","),
      ["gap", "region"] if args.smoke else args.variants.split(","),
      [0] if args.smoke else [int(s) for s in args.seeds.split(",")],
      overrides, dict(p.split("=", 1) for p in args.pretrained))
  if not fanout.execute(args, jobs, root):
    return 0
  step2 = cfg.stages[cfg.stage_order[0]].report_as or cfg.stage_order[0]
  table = sweeps.table2(root, common.load_runs(jobs), STAGE, step2,
                        cfg.rankopt.report_as)
  return int(any(r.state != "ok" for r in table["runs"]))


if __name__ == "__main__":
  with errors.one_line_errors():
    sys.exit(main())
