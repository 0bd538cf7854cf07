"""Jobs of ``benchmarks/benchmark.py`` side by side: every JAX/PyTorch
ratio of each (rows and joint-step variants), how far apart, and the load
each ran under.

Usage: python -m benchmarks.compare_runs A.json B.json [C.json ...] [--tolerance 0.05]

Two jobs: B's ratio over A's, minus 1. More: the median over the jobs and
the spread (largest over smallest, minus 1), since one job's CI misses
what changes between jobs. Exits 1 where a ratio's jobs are further apart
than the tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from benchmarks import timing


def ratios(result: dict) -> dict[str, dict]:
  """A job's ``paired_ratio``s by name: ``"joint batch 8"`` for a row,
  ``"variants: project batch 8"`` for a joint-step variant."""
  out = {}
  for e in result["results"]:
    if e["framework"] == "jax" and e.get("vs_torch"):
      out[f"{e['step']} batch {e['batch']}"] = e["vs_torch"]
  variants = result.get("analysis", {}).get("joint_step_variants", {})
  for name, v in variants.items():
    if isinstance(v, dict) and v.get("vs_torch"):
      out[f"variants: {name} batch {variants.get('batch')}"] = v["vs_torch"]
  return out


def compare(a: dict, b: dict, tolerance: float = 0.05) -> list[dict]:
  """Per ratio both jobs have: both, ``change`` (b's median over a's,
  minus 1), whether it is within ``tolerance`` and whether the CIs overlap."""
  ra, rb = ratios(a), ratios(b)
  rows = []
  for name in (n for n in ra if n in rb):
    change = rb[name]["median"] / ra[name]["median"] - 1
    rows.append({"ratio": name, "a": ra[name], "b": rb[name],
                 "change": change, "within_tolerance": abs(change) <= tolerance,
                 "cis_overlap": timing.ratios_agree(ra[name], rb[name])})
  return rows


def spread(jobs: list[dict], tolerance: float = 0.05) -> list[dict]:
  """Per ratio every job has: its medians, their median, ``spread`` (largest
  over smallest, minus 1) and whether it is within ``tolerance``."""
  per_job = [ratios(j) for j in jobs]
  rows = []
  for name in (n for n in per_job[0] if all(n in r for r in per_job[1:])):
    medians = [r[name]["median"] for r in per_job]
    rows.append({"ratio": name, "ratios": [r[name] for r in per_job],
                 "median": float(np.median(medians)),
                 "spread": max(medians) / min(medians) - 1,
                 "within_tolerance": max(medians) / min(medians) - 1
                 <= tolerance})
  return rows


def _load(result: dict) -> str:
  load = result.get("load") or {}
  busy = load.get("all_cpus_busy_frac")
  return (f"load averages {load.get('loadavg_start')} -> "
          f"{load.get('loadavg_end')}, all CPUs busy "
          f"{'-' if busy is None else f'{100 * busy:.0f}%'}")


def _print_pair(jobs: list[dict], tolerance: float) -> bool:
  rows = compare(*jobs, tolerance=tolerance)
  print(f"{'JAX / PyTorch':<28}{'A [95% CI]':<26}{'B [95% CI]':<26}"
        f"{'B/A-1':>8}  within")
  for r in rows:
    print(f"{r['ratio']:<28}{timing.format_ratio(r['a']):<26}"
          f"{timing.format_ratio(r['b']):<26}{100 * r['change']:>+7.1f}%  "
          f"{'yes' if r['within_tolerance'] else 'NO'}")
  return all(r["within_tolerance"] for r in rows)


def _print_spread(jobs: list[dict], tolerance: float) -> bool:
  rows = spread(jobs, tolerance)
  print(f"{'JAX / PyTorch':<28}" + "".join(
      f"{chr(65 + i):>8}" for i in range(len(jobs)))
        + f"{'median':>8}{'spread':>8}  within")
  for r in rows:
    print(f"{r['ratio']:<28}" + "".join(
        f"{x['median']:>8.3f}" for x in r["ratios"])
          + f"{r['median']:>8.3f}{100 * r['spread']:>7.1f}%  "
          f"{'yes' if r['within_tolerance'] else 'NO'}")
  return all(r["within_tolerance"] for r in rows)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("jobs", nargs="+", metavar="JOB.json")
  parser.add_argument("--tolerance", type=float, default=0.05)
  args = parser.parse_args(argv)
  if len(args.jobs) < 2:
    parser.error("needs two or more jobs")
  jobs = []
  for i, path in enumerate(args.jobs):
    with open(path) as f:
      jobs.append(json.load(f))
    print(f"{chr(65 + i)} {path}: {_load(jobs[-1])}")
  show = _print_pair if len(jobs) == 2 else _print_spread
  return 0 if show(jobs, args.tolerance) else 1


if __name__ == "__main__":
  sys.exit(main())
