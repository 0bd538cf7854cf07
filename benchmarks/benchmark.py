"""Train-step throughput of the project's JAX step vs the PyTorch reference.

    python -m benchmarks.benchmark --out benchmarks/results/cpu_2core.json \
        [--device-size auto|small|full|tiny] [--steps N] [--repeats R]

Rows: each step kind of the paper (``classification``: GAP;
``segmentation``: only the seg conv trains; ``joint``: region pooling +
lambda * pixel CE) at each batch size, and inference, each timed as the
project runs it (``runners.py``) against its twin in ``torch_reference.py``,
block by block in one process (``timing.py``). Then the analyses
(``analyses.py``): the joint step's variants, the segmentation upsampling
alone, the input pipeline alone. Sizes: ``full`` (GPU/TPU default) is
ResNet-50 at 224 px in bfloat16 at batches 10 and 256; ``small`` (CPU
default) the same in float32 at batch 8; ``tiny`` is for tests. img/s is the
median over blocks; ``vs_torch`` the median over rounds of the ratio of the
round's two blocks, with a bootstrap 95% CI; ``img_per_s_quiet`` counts only
blocks where other processes used < 10% of the CPUs, the figure to compare
on a shared machine. On CPU the JAX steps are compiled with
``xla_flags.cpu_compiler_options()`` (Eigen convolutions). Options and the
JSON's fields: ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import statistics
import sys
import time
import traceback
from typing import Any, Callable

import jax

from benchmarks import analyses
from benchmarks import runners
from benchmarks import timing
from rapool_jax import xla_flags

STEP_KINDS = ("classification", "segmentation", "joint")

# Benchmark sizes. "steps" per timed block (at least: "min_block_s" asks for
# blocks of that many seconds), "repeats" rounds of blocks, "warmup" steps;
# "variants" of the joint step and "analysis_pieces" (default: all) run
# after the rows. On 2 loaded CPU cores one step takes seconds: "small" keeps
# a quiet machine's job near 15 min (README: the noise that leaves).
SIZES = {
    "full": dict(depth="50", width=1.0, image_size=256, crop=224,
                 batches=(10, 256), eval_batch=256, dtype="bfloat16",
                 steps=20, repeats=5, warmup=3, min_images_per_block=2000),
    "small": dict(depth="50", width=1.0, image_size=256, crop=224,
                  batches=(8,), eval_batch=8, dtype="float32",
                  steps=1, repeats=8, warmup=2, min_block_s=6.0,
                  variants=("project", "no_seg_loss", "no_dropout"),
                  analysis_pieces=("joint_step_variants", "upsample_alone",
                                   "input_pipeline")),
    "tiny": dict(depth="tiny", width=0.125, image_size=72, crop=64,
                 batches=(4,), eval_batch=4, dtype="float32",
                 steps=1, repeats=1, warmup=1),
}
ANALYSIS_PIECES = ("joint_step_variants", "upsample_alone", "input_pipeline")


def torch_available() -> tuple[bool, str]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return False, f"torch is not importable ({e})"
  del torch
  return True, ""


def row_plan(batches, kinds, eval_batch) -> list[tuple[str, int]]:
  """``(step, batch)`` rows, most wanted first: the joint step at each batch
  (largest first), then eval, then the other step kinds. A time budget cuts
  the plan from the end, so a short lease still measures the headline rows."""
  batches = sorted(batches, reverse=True)
  rows = [("joint", b) for b in batches if "joint" in kinds]
  rows.append(("eval", eval_batch))
  rows += [(k, b) for b in batches for k in kinds if k != "joint"]
  return rows


def steps_per_block(size: dict, batch: int) -> int:
  """Enough steps that a timed block sees ``min_images_per_block`` images
  (a block of 20 steps at batch 10 would be over in ~0.1 s on a GPU)."""
  return max(size["steps"], -(-size.get("min_images_per_block", 0) // batch))


def size_config(size_name: str, steps=None, repeats=None, batches=None,
                **overrides) -> dict:
  """``SIZES[size_name]`` with the overrides given (None: the size's own)."""
  size = dict(SIZES[size_name])
  for key, value in (("steps", steps), ("repeats", repeats), *overrides.items()):
    if value is not None:
      size[key] = value
  if batches:
    size["batches"] = tuple(batches)
  return size


# ----------------------------------------------------------------------------
# Rows: the project's step and its torch twin, interleaved.


class Job:
  """One benchmark job's settings: the size, the config, the compiler
  options and the torch reference (``torch``: None where it does not run)."""

  def __init__(self, size: dict, dtype: str, xla_options: str,
               with_torch: bool, torch_compile: str, log=print):
    self.size, self.dtype, self.log = size, dtype, log
    self.config = runners.make_config(size, dtype)
    self.options = (xla_flags.cpu_compiler_options(jax.devices()[0].platform)
                    if xla_options == "recommended" else {})
    self.torch, self.torch_info = None, None
    ok, why = torch_available() if with_torch else (False, "")
    if with_torch and not ok:
      log(f"torch reference skipped: {why}")
      self.torch_info = {"skipped": why}
    elif ok:
      # torch is optional: its reference loads only where torch imports.
      from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
      self.torch = torch_reference
      compile_torch = {"on": True, "off": False}.get(
          torch_compile, torch_reference.default_device().type == "cuda")
      self.torch_info = {**torch_reference.runtime_info(),
                         "compile": compile_torch,
                         "amp_bf16": dtype == "bfloat16",
                         "channels_last": True}

  def torch_runner(self, kind: str, batch: int):
    return self.torch.runner(kind, batch, self.size, self.dtype == "bfloat16",
                             self.torch_info["compile"])


def entry(runner, blocks, tracker, *, step, batch, image_size, dtype,
          extra=None) -> dict[str, Any]:
  """A row's JSON entry for one runner."""
  out = {"framework": runner.framework, "step": step, "batch": batch,
         "image_size": image_size, "dtype": dtype, **timing.summary(blocks),
         "compile_s": runner.compile_s,
         "first_call_s": getattr(runner, "first_call_s", None),
         "peak_mem_bytes": tracker.peak, "peak_mem_kind": tracker.kind,
         **runner.cost}
  if out["gflop_per_step"]:
    out["achieved_tflop_per_s"] = (
        out["gflop_per_step"] * out["img_per_s"] / batch / 1e3)
  out.update(extra or {})
  return out


def time_row(job: Job, kind: str, batch: int) -> list[dict]:
  """Times the row's JAX step and, interleaved, its torch twin; returns
  their entries, JAX's first."""
  size = job.size
  row = [runners.jax_runner(kind, batch, job.config, job.options)]
  trackers = [timing.PeakTracker()]
  if job.torch:
    row.append(job.torch_runner(kind, batch))
    row[1].reset_device_peak()
    trackers.append(timing.PeakTracker(row[1].device_peak))
  blocks = timing.time_interleaved(row, steps_per_block(size, batch),
                                   size["repeats"], size["warmup"], trackers,
                                   size.get("min_block_s", 0.0))
  entries = []
  for runner, b, tracker in zip(row, blocks, trackers):
    extra = {"ms_per_step": 1e3 * batch / timing.summary(b)["img_per_s"]}
    if runner.framework == "torch":
      extra.update(runner.compile_fields())
    elif job.torch:
      extra.update(timing.vs_reference(b, blocks[1]))
    entries.append(entry(runner, b, tracker, step=kind, batch=batch,
                         image_size=size["crop"], dtype=job.dtype,
                         extra=extra))
  return entries


def add_row(result, budget: timing.Budget, job: Job, kind: str,
            batch: int) -> bool:
  """Times one planned row into ``result``: its entries, or its error.
  Returns False, the row listed as skipped, where the budget has no room."""
  row, log = {"step": kind, "batch": batch}, job.log
  # Compiling dominates a row, whatever its batch: one estimate per kind.
  piece = "eval" if kind == "eval" else "train"
  if not budget.allows(piece):
    log(f"{kind:<15}{batch:>6}  skipped: {budget.left():.0f} s of the time "
        f"budget left, the longest such row took "
        f"{budget.longest.get(piece, 0.0):.0f} s")
    result["skipped"].append(row)
    return False
  try:
    with budget.piece(piece):  # a row that raises leaves the estimate be
      entries = time_row(job, kind, batch)
      result["results"].extend(entries)
      log(format_row(entries))
      gc.collect()
      if job.torch:
        job.torch.release_cache()
  except Exception as e:  # pylint: disable=broad-except
    # One broken row (say, torch.compile on a new driver) must not cost the
    # rest of a leased accelerator's measurements.
    error = f"{type(e).__name__}: {str(e)[:500]}"
    log(f"{kind:<15}{batch:>6}  FAILED: {error}")
    traceback.print_exc()
    result["errors"].append({**row, "error": error})
    gc.collect()
  return True


# ----------------------------------------------------------------------------
# The analysis, after the rows.


def analysis_fits(result, budget: timing.Budget, log) -> bool:
  """Whether the analysis is expected to end within the budget; where not,
  it is listed as skipped."""
  # The analysis compiles the joint step three more times (JAX only).
  if budget.allows("analysis", 1.5 * budget.longest.get("train", 0.0)):
    return True
  log(f"analysis skipped: {budget.left():.0f} s of the time budget left")
  result["skipped"].append({"step": "analysis"})
  return False


def run_analysis(result, job: Job, on_piece=None):
  """The pieces of ``ANALYSIS_PIECES`` the size asks for, in that order (in
  place). A piece that raises is listed under ``errors`` and the rest still
  run; ``on_piece(result)`` follows each piece."""
  pieces = {"joint_step_variants": analysis_joint_variants,
            "upsample_alone": analysis_upsample,
            "input_pipeline": analysis_input_pipeline}
  wanted = job.size.get("analysis_pieces")
  result["analysis"] = {}
  for name, piece in pieces.items():
    if wanted and name not in wanted:
      continue
    try:
      result["analysis"][name] = piece(result, job, max(job.size["batches"]))
    except Exception as e:  # pylint: disable=broad-except
      error = f"{type(e).__name__}: {str(e)[:500]}"
      job.log(f"analysis {name} FAILED: {error}")
      traceback.print_exc()
      result["errors"].append({"step": f"analysis/{name}", "error": error})
    if on_piece:
      on_piece(result)


def _block_args(size: dict) -> dict:
  return dict(steps=size["steps"], repeats=size["repeats"],
              warmup=size["warmup"], min_block_s=size.get("min_block_s", 0.0))


def analysis_joint_variants(result, job: Job, batch: int):
  job.log(f"joint step variants (batch {batch}):")
  joint = analyses.joint_step_variants(
      job.config, batch, compiler_options=job.options, log=job.log,
      reference=(functools.partial(job.torch_runner, "joint", batch)
                 if job.torch else None),
      names=job.size.get("variants", tuple(analyses.JOINT_VARIANTS)),
      **_block_args(job.size))
  job.log(format_variants(joint, [n for n in analyses.JOINT_VARIANTS
                                  if n in joint]))
  hashed = joint.get("hash_dropout", {}).get("time_vs_project")
  job.log(f"  seg loss + upsampling: {_pct(joint.get('seg_loss_flop_share'))} "
          f"of the joint step's FLOPs, "
          f"{_pct(joint.get('seg_loss_time_share'))} of its time (quiet "
          f"blocks: {_pct(joint.get('seg_loss_time_share_quiet'))}); dropout: "
          f"{_pct(joint.get('dropout_time_share'))}; hashed dropout masks: "
          f"{_fmt(hashed)}x the time")
  row = next((e.get("vs_torch") for e in result["results"]
              if e["framework"] == "jax" and e["step"] == "joint"
              and e["batch"] == batch), None)
  if row and "vs_torch" in joint["project"]:
    # The same step, timed twice in one job: a difference beyond both CIs
    # means the load changed in between, not the step.
    project = joint["project"]["vs_torch"]
    agree = timing.ratios_agree(row, project)
    joint["project_vs_row"] = {"row": row, "variants": project,
                               "within_noise": agree}
    job.log(f"  project step / torch: {timing.format_ratio(project)} here, "
            f"{timing.format_ratio(row)} in the joint row: "
            + {True: "within noise", None: "no CI to compare",
               False: "NOT within noise (the load changed)"}[agree])
  return joint


def analysis_upsample(result, job: Job, batch: int):
  del result
  job.log("segmentation upsampling alone:")
  up = analyses.upsample_analysis(batch, job.size["crop"],
                                  compiler_options=job.options)
  for name in analyses.UPSAMPLE_IMPLS:
    u = up[name]
    job.log(f"  {name}: {_fmt(u['forward_gflop'], '.4f')} GFLOP fwd (XLA "
            f"count), {u['forward_ms']:.2f} ms fwd, "
            f"{u['forward_backward_ms']:.2f} ms fwd+bwd, max |diff| to "
            f"subpixel {u['max_abs_diff_vs_subpixel']:.1e}; HLO: "
            f"{u['forward_hlo_convolutions']}")
  job.log(f"  dense zero-stuffed conv would be "
          f"{up['dense_zero_stuffed_gflop']:.1f} GFLOP fwd")
  return up


def analysis_input_pipeline(result, job: Job, batch: int):
  inputs = analyses.input_pipeline_throughput(
      job.config, batch, steps=max(job.size["steps"], 2000 // batch),
      log=job.log)
  train_rates = [e["img_per_s"] for e in result["results"]
                 if e["framework"] == "jax" and e["batch"] == batch
                 and e["step"] != "eval"]
  if train_rates:
    # Over the fastest train step's img/s: > 1, the pipeline keeps up.
    for name in ("device_augment", "host_stream"):
      rate = inputs[f"{name}_img_per_s"]
      inputs[f"{name}_vs_fastest_train_step"] = (
          rate / max(train_rates) if rate else None)
  return inputs


# ----------------------------------------------------------------------------
# The job.


def run(size_name: str, *, steps: int | None = None,
        repeats: int | None = None, dtype: str | None = None,
        batches=None, kinds=STEP_KINDS, with_torch: bool = True,
        torch_compile: str = "auto", xla_options: str = "recommended",
        analysis: bool = True, time_budget_s: float | None = None,
        on_row: Callable[[dict], None] | None = None,
        log=print, **size_overrides) -> dict[str, Any]:
  """Runs the benchmark; returns the JSON-able result (see module doc).

  Rows run in ``row_plan`` order. With ``time_budget_s``, a row (or the
  analysis) that would not end within the budget is skipped and listed under
  ``skipped``; a row that raises is listed under ``errors`` and the rest
  still run. ``on_row(result)`` follows each row and analysis piece.
  ``size_overrides``: ``warmup``, ``min_block_s``, ``variants``,
  ``analysis_pieces`` (None: the size's own).
  """
  size = size_config(size_name, steps, repeats, batches, **size_overrides)
  job = Job(size, dtype or size["dtype"], xla_options, with_torch,
            torch_compile, log)
  result = start_result(size_name, job, time_budget_s)
  budget, load_start = timing.Budget(time_budget_s), timing.machine_load()
  log(HEADER)
  for kind, batch in row_plan(size["batches"], kinds, size["eval_batch"]):
    if add_row(result, budget, job, kind, batch) and on_row:
      on_row(result)
  if analysis and analysis_fits(result, budget, log):
    run_analysis(result, job, on_piece=on_row)
  result["load"] = timing.load_between(load_start, timing.machine_load())
  log(f"load averages {result['load']['loadavg_start']} at the start, "
      f"{result['load']['loadavg_end']} at the end; all CPUs busy "
      f"{_pct(result['load']['all_cpus_busy_frac'])} of the time")
  return result


def start_result(size_name: str, job: Job, time_budget_s) -> dict[str, Any]:
  """Logs what is about to be timed; returns the result before any row."""
  info, size = runners.device_info(), job.size
  job.log(f"device: {info['platform']} {info['device_kind']} "
          f"({info['cpu_count']} CPU cores); size '{size_name}': ResNet-"
          f"{size['depth']} x{size['width']} at {size['crop']} px (crops of "
          f"{size['image_size']}), {job.dtype}, batches {size['batches']}, "
          f"{size['repeats']} rounds of blocks of >= {size['steps']} steps "
          f"and >= {size.get('min_block_s', 0)} s after {size['warmup']} "
          f"warm-up; JAX compiler options {job.options or 'XLA defaults'}")
  return {"device": info, "size": size_name, "size_config": size,
          "dtype": job.dtype, "jax_compiler_options": job.options,
          "torch": job.torch_info,
          "quiet_other_cpu_frac": timing.QUIET_OTHER_CPU, "results": [],
          "time_budget_s": time_budget_s, "skipped": [], "errors": []}


# ----------------------------------------------------------------------------
# Printing.


def _pct(x) -> str:
  return "-" if x is None else f"{100 * x:.1f}%"


def _fmt(x, spec=".2f") -> str:
  return "-" if x is None else format(x, spec)


def format_variants(out: dict, names) -> str:
  lines = [f"  {'variant':<22}{'img/s':>8}{'quiet img/s':>13}{'GFLOP/step':>12}"
           f"{'compile s':>11}  {'/ torch, paired [95% CI]':<26}"]
  for name in names:
    v = out[name]
    lines.append(f"  {name:<22}{v['img_per_s']:>8.2f}"
                 f"{_fmt(v['img_per_s_quiet']):>13}"
                 f"{_fmt(v['gflop_per_step'], '.1f'):>12}"
                 f"{v['compile_s']:>11.1f}  "
                 f"{timing.format_ratio(v.get('vs_torch')):<26}")
  if "torch_reference" in out:
    ref = out["torch_reference"]
    lines.append(f"  {'torch (reference)':<22}{ref['img_per_s']:>8.2f}"
                 f"{_fmt(ref['img_per_s_quiet']):>13}")
  return "\n".join(lines)


HEADER = (f"{'step':<15}{'batch':>6}{'dtype':>10}{'jax img/s':>11}"
          f"{'torch img/s':>13}  {'jax/torch, paired [95% CI]':<28}"
          f"{'quiet j/t':>10}{'blocks':>8}{'load':>6}"
          f"{'jax compile s':>15}{'jax GFLOP/img':>15}{'jax peak MiB':>14}"
          f"{'torch peak MiB':>16}")


def format_row(entries: list[dict]) -> str:
  """One table row: the JAX entry, its torch twin (if any), their paired
  ratio with its CI, the blocks (rounds x steps) and their mean load."""
  j = next(e for e in entries if e["framework"] == "jax")
  t = next((e for e in entries if e["framework"] == "torch"), None)
  mib = lambda v: f"{v / 2**20:.0f}" if v else "-"  # noqa: E731
  flop = (f"{j['gflop_per_step'] / j['batch']:.1f}" if j["gflop_per_step"]
          else "-")
  quiet = j.get("vs_torch_quiet")
  blocks = f"{len(j['img_per_s_repeats'])}x{j.get('steps_per_block', '?')}"
  load = _fmt(statistics.mean(j["load_1m"]) if j.get("load_1m") else None,
              ".1f")
  return (f"{j['step']:<15}{j['batch']:>6}{j['dtype']:>10}"
          f"{j['img_per_s']:>11.2f}{_fmt(t and t['img_per_s']):>13}"
          f"  {timing.format_ratio(j.get('vs_torch')):<28}"
          f"{_fmt(quiet and quiet['median']):>10}{blocks:>8}{load:>6}"
          f"{j['compile_s']:>15.1f}"
          f"{flop:>15}{mib(j['peak_mem_bytes']):>14}"
          f"{mib(t['peak_mem_bytes']) if t else '-':>16}")


def format_table(result: dict) -> str:
  by_key = {}
  for e in result["results"]:
    by_key.setdefault((e["step"], e["batch"]), []).append(e)
  return "\n".join([HEADER, *map(format_row, by_key.values())])
def main(argv=None):
  args = _parse_args(argv)
  # Both frameworks share the accelerator: JAX must not take 75% of it upfront.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  size = args.device_size
  if size == "auto":
    size = "small" if jax.devices()[0].platform == "cpu" else "full"
  t0 = time.perf_counter()
  command = " ".join(["python -m benchmarks.benchmark"]
                     + list(argv if argv is not None else sys.argv[1:]))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

  def write(result, complete):
    result.update(wall_s=time.perf_counter() - t0, command=command,
                  complete=complete)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
      json.dump(result, f, indent=2)
    os.replace(tmp, args.out)

  result = run(size, steps=args.steps, repeats=args.repeats, dtype=args.dtype,
               batches=args.batches, kinds=tuple(args.kinds),
               with_torch=not args.no_torch, torch_compile=args.torch_compile,
               xla_options=args.xla_options, analysis=not args.no_analysis,
               time_budget_s=args.time_budget_s,
               on_row=lambda r: write(r, complete=False),
               warmup=args.warmup, min_block_s=args.min_block_s,
               variants=args.variants, analysis_pieces=args.analysis_pieces)
  write(result, complete=True)
  print(format_table(result))
  print(f"wrote {args.out} ({result['wall_s']:.0f} s)")


def _parse_args(argv) -> argparse.Namespace:
  """Returns the command line's options (``argv``; None: ``sys.argv``)."""
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="JSON file to write")
  parser.add_argument("--device-size", default="auto",
                      choices=("auto", "small", "full", "tiny"),
                      help="auto: full on GPU/TPU, small on CPU")
  parser.add_argument("--steps", type=int, default=None,
                      help="steps per timed block, at least (default per "
                           "size)")
  parser.add_argument("--repeats", type=int, default=None,
                      help="rounds of interleaved blocks, one per framework "
                           "(default per size)")
  parser.add_argument("--warmup", type=int, default=None,
                      help="untimed steps per runner (default per size)")
  parser.add_argument("--min-block-s", type=float, default=None,
                      help="more steps per block until the slowest runner's "
                           "block lasts this long (0: exactly --steps)")
  parser.add_argument("--variants", nargs="+", default=None,
                      choices=tuple(analyses.JOINT_VARIANTS),
                      help="joint-step variants to time (project always)")
  parser.add_argument("--analysis-pieces", nargs="+", default=None,
                      choices=ANALYSIS_PIECES,
                      help="analysis pieces to run (default per size)")
  parser.add_argument("--dtype", default=None,
                      choices=("float32", "bfloat16"),
                      help="compute dtype (default: bfloat16 full, float32 "
                           "small); torch uses bf16 autocast for bfloat16")
  parser.add_argument("--batches", type=int, nargs="+", default=None)
  parser.add_argument("--step-kinds", nargs="+", default=list(STEP_KINDS),
                      choices=STEP_KINDS, dest="kinds")
  parser.add_argument("--torch-compile", default="auto",
                      choices=("auto", "on", "off"),
                      help="torch.compile the reference (auto: on for CUDA)")
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--no-analysis", action="store_true",
                      help="skip the analyses (variants, upsampling, inputs)")
  parser.add_argument("--time-budget-s", type=float, default=None,
                      help="skip rows that would end past this many seconds "
                           "(most wanted rows run first); the JSON is "
                           "rewritten after every row")
  parser.add_argument("--xla-options", default="recommended",
                      choices=("recommended", "default"),
                      help="recommended: compile the JAX steps with "
                           "cpu_compiler_options() (CPU only)")
  return parser.parse_args(argv)


if __name__ == "__main__":
  main()
