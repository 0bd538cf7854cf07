"""Populations of P members against P sequential runs, per member-axis form.

    python -m benchmarks.population_benchmark \
        --out benchmarks/results/population_cpu.json \
        [--sizes 1 2 4 8 16] [--forms vmap map unroll] [--stage joint] \
        [--steps 2] [--repeats 3] [--config configs/isic2017.py:crossval] \
        [--batch-size B]

The model, stage and batch are the cross-validation's (``crossval``:
ResNet-18 at 1/4 width, 112 px crops of 128 px, batch 32) on random uint8
images and disc masks on the device. The baseline is the single run's own
step (``train.resident_train_step``, compiled as ``train.train_stage`` does):
P runs one after another train at its img/s. Each population
(``population.Population``, P seeds, one form) is timed in ``repeats``
rounds, each a block of ``steps`` population steps and one of ``P * steps``
single steps (the same member-images) in alternating order, with the CPU
share other processes took (``timing.timed_block``); the ratio is the
median over rounds. Memory: XLA's account of each program and the process's
peak RSS over its blocks.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import statistics
import sys
import time
from typing import Any

from rapool_jax import xla_flags

# As the training entry point does, before JAX starts (Eigen convolutions).
if os.environ.get("RAPOOL_DEFAULT_XLA_FLAGS") != "1":
  xla_flags.apply_xla_flags(xla_flags.cpu_xla_flags())

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import runners  # noqa: E402
from benchmarks import timing  # noqa: E402
from rapool_jax import config_files  # noqa: E402
from rapool_jax import optim  # noqa: E402
from rapool_jax import population  # noqa: E402
from rapool_jax import sharding  # noqa: E402
from rapool_jax import train  # noqa: E402
from rapool_jax.data import pipeline  # noqa: E402


def random_split(num: int, image_size: int, seed: int = 0) -> pipeline.Split:
  """uint8 images ``[N, S, S, 3]``, disc masks, random labels."""
  images, masks, labels, has_mask = (
      np.asarray(a) for a in runners.synthetic_device_data(
          num, image_size, seed))
  return pipeline.Split(images=images, masks=masks, labels=labels,
                        has_mask=has_mask,
                        ids=np.array([f"img{i:05d}" for i in range(num)]))


class _CompiledRunner:
  """A step compiled ahead as ``train.train_stage`` compiles it, timed over
  four rotating argument tuples ``self.args`` (``timing``'s runner: its
  ``batch`` counts member-images)."""

  def compile(self, step, state, mesh, config) -> None:
    t0 = time.perf_counter()
    self.compiled, self.state = sharding.compile_train_step(
        step, state, self.args[0], sharding.replicated(mesh),
        layout=config.systems.state_layout,
        donate=config.systems.donate_state)
    self.compile_s = time.perf_counter() - t0
    self.xla_mem_bytes = runners.xla_mem_bytes(self.compiled)

  def run(self, steps: int) -> float:
    jax.block_until_ready(self.state)
    t0 = time.perf_counter()
    for t in range(steps):
      self.state, scalars = self.compiled(self.state, *self.args[t % 4])
    jax.block_until_ready((self.state, scalars))
    return time.perf_counter() - t0


class SequentialRunner(_CompiledRunner):
  """One single run's step, as ``run.run_stage`` builds it and
  ``train.train_stage`` compiles it."""

  def __init__(self, pop: population.Population, name: str):
    config, stage = pop.config, pop.config.stages[name]
    variables = train.init_variables(
        pop.model, train.make_key(0, config.systems.prng_impl),
        config.data.crop_size, config.model)
    tx = optim.make_optimizer(config.optimizer, stage, variables["params"])
    state = train.create_train_state(pop.model, variables, tx, pop.mesh)
    step = functools.partial(
        train.resident_train_step, stage=stage, data=config.data,
        mean=tuple(config.data.mean), std=tuple(config.data.std))
    self.key = train.make_key(0, config.systems.prng_impl)
    idx = [sharding.put_replicated(pipeline.batch_indices(
        0, 0, t, config.train.batch_size, len(pop.rows[0])), pop.mesh)
           for t in range(4)]
    self.args = [(i, self.key, pop.split) for i in idx]
    self.batch = config.train.batch_size  # member-images a step
    self.compile(step, state, pop.mesh, config)


class PopulationRunner(_CompiledRunner):
  """A population of ``size`` seeds in one ``form``, compiled ahead as
  ``train.train_stage`` compiles it."""

  def __init__(self, config, data, name: str, size: int, form: str):
    members = [population.Member(seed=p) for p in range(size)]
    self.pop = population.Population(config, members, form=form, data=data)
    state = self.pop.start(name, self.pop.init_variables())
    self.args = list(self.pop.step_args(name, 0, 0, 4))
    self.batch = size * config.train.batch_size  # member-images a step
    self.compile(population.population_step(config, name, form), state,
                 self.pop.mesh, config)


def compare(seq: SequentialRunner, runner: PopulationRunner, size: int,
            steps: int, repeats: int) -> dict[str, Any]:
  """Warm-up, then ``repeats`` rounds of one population block and one
  sequential block of equal member-images, in alternating order."""
  runner.run(1)
  seq.run(size)
  timing.rss_peak_reset()
  rounds = []
  for r in range(repeats):
    blocks = {}
    order = [("population", runner, steps), ("sequential", seq, size * steps)]
    for kind, run, n in (order if r % 2 == 0 else order[::-1]):
      blocks[kind] = timing.timed_block(run, n)
    rounds.append({
        **{f"{k}_member_img_per_s": b.img_per_s for k, b in blocks.items()},
        **{f"{k}_other_cpu_frac": b.other_cpu_frac
           for k, b in blocks.items()}})
  ratios = [x["population_member_img_per_s"] / x["sequential_member_img_per_s"]
            for x in rounds]
  return {
      "member_img_per_s": statistics.median(
          x["population_member_img_per_s"] for x in rounds),
      "sequential_img_per_s": statistics.median(
          x["sequential_member_img_per_s"] for x in rounds),
      "ratio": statistics.median(ratios), "ratios": ratios,
      "rounds": rounds,
      "compile_s": runner.compile_s,
      "xla_mem_bytes": runner.xla_mem_bytes,
      "peak_rss_bytes": timing.rss_peak_bytes(),
  }


def fastest_form(rows: list[dict], size: int = 4) -> str:
  """The form with the best ratio at ``size`` members; ``unroll`` (the
  single run's kernels) when no form beats sequential runs there."""
  at = [r for r in rows if r["members"] == size and "ratio" in r]
  if not at:
    return "unroll"
  best = max(at, key=lambda r: r["ratio"])
  return best["form"] if best["ratio"] >= 1.0 else "unroll"


def run(args, log=print) -> dict[str, Any]:
  """Every (size, form) of ``args`` against the sequential step."""
  config = config_files.load(config_files.resolve(args.config))
  if args.batch_size:
    config.train.batch_size = args.batch_size
  config.model.num_classes = pipeline.num_classes(config.data.task)
  split = random_split(args.num_images, config.data.image_size)
  rows_of = lambda p: [np.arange(len(split), dtype=np.int32)] * p  # noqa: E731
  probe = population.Population(config, [population.Member(0)],
                                data=(split, rows_of(1)))
  seq = SequentialRunner(probe, args.stage)
  log(f"sequential step compiled in {seq.compile_s:.1f} s")
  result = {"config": args.config, "stage": args.stage,
            "batch": config.train.batch_size,
            "crop": config.data.crop_size, "num_images": args.num_images,
            "steps_per_block": args.steps, "repeats": args.repeats,
            "sequential": {"compile_s": seq.compile_s,
                           "xla_mem_bytes": seq.xla_mem_bytes},
            "rows": []}
  for size in args.sizes:
    for form in args.forms:
      row = {"members": size, "form": form}
      try:
        runner = PopulationRunner(config, (split, rows_of(size)), args.stage,
                                  size, form)
        row.update(compare(seq, runner, size, args.steps, args.repeats))
        del runner
      except Exception as e:  # pylint: disable=broad-except
        row["error"] = f"{type(e).__name__}: {e}"[:500]
      log(json.dumps({k: row.get(k) for k in (
          "members", "form", "member_img_per_s", "sequential_img_per_s",
          "ratio", "compile_s", "xla_mem_bytes", "error")}))
      result["rows"].append(row)
      args.on_row(result)
  result["fastest_form_at_4"] = fastest_form(result["rows"])
  return result


def format_table(result: dict) -> str:
  lines = ["| P | form | member-img/s | sequential img/s | ratio | compile s "
           "| XLA memory MiB |", "|---|---|---|---|---|---|---|"]
  for r in result["rows"]:
    if "error" in r:
      lines.append(f"| {r['members']} | {r['form']} | {r['error']} |||||")
      continue
    lines.append(
        f"| {r['members']} | {r['form']} | {r['member_img_per_s']:.1f} | "
        f"{r['sequential_img_per_s']:.1f} | {r['ratio']:.2f} | "
        f"{r['compile_s']:.0f} | {(r['xla_mem_bytes'] or 0) / 2**20:.0f} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--config", default="configs/isic2017.py:crossval")
  parser.add_argument("--stage", default="joint")
  parser.add_argument("--batch-size", type=int, default=0,
                      help="0: the config's (the paper's batch is 10)")
  parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
  parser.add_argument("--forms", nargs="+", default=list(population.FORMS),
                      choices=population.FORMS)
  parser.add_argument("--steps", type=int, default=2,
                      help="population steps per timed block")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--num-images", type=int, default=256)
  parser.add_argument("--note", default="", help="recorded in the JSON")
  args = parser.parse_args(argv)
  command = "python -m benchmarks.population_benchmark " + shlex.join(
      argv if argv is not None else sys.argv[1:])
  t0 = time.perf_counter()
  header = {"command": command, "note": args.note,
            "device": runners.device_info()}

  def write(result, complete=False):
    out = {**header, **result, "complete": complete,
           "wall_s": time.perf_counter() - t0}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
      json.dump(out, f, indent=2)
    os.replace(args.out + ".tmp", args.out)

  args.on_row = write
  result = run(args)
  write(result, complete=True)
  print(format_table(result))
  print(f"fastest form at P=4: {result['fastest_form_at_4']}; wrote "
        f"{args.out} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
  main()
