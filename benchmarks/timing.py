"""The timing harness: runners timed in interleaved blocks, paired ratios
with a bootstrap CI, the machine's load, and peak memory.

A runner has ``framework`` ("jax" or "torch"), ``batch`` and ``run(steps)
-> seconds`` (device-synchronised). Interleaving puts the runners of one
round under the same background load; pairing their blocks round by round
cancels what the load did to both.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import statistics
import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import scipy.stats

# A block counts as quiet when other processes used < 10% of the CPUs.
QUIET_OTHER_CPU = 0.10


class Block(NamedTuple):
  """One timed block of one runner: ``other_cpu_frac`` is the share of all
  CPUs other processes used meanwhile (None off Linux), ``load_1m`` the
  1-minute load average at its end."""
  img_per_s: float
  other_cpu_frac: float | None
  load_1m: float | None
  steps: int


def is_quiet(block: Block) -> bool:
  return (block.other_cpu_frac is not None
          and block.other_cpu_frac < QUIET_OTHER_CPU)


# ----------------------------------------------------------------------------
# The machine: load and memory.


def proc_line(path: str, prefix: str) -> str | None:
  """The first line of a /proc file that starts with ``prefix`` (None where
  there is none, or no such file: not Linux)."""
  try:
    with open(path) as f:
      return next((line for line in f if line.startswith(prefix)), None)
  except OSError:
    return None


def system_busy_s() -> float | None:
  """CPU seconds all processes have spent so far (Linux ``/proc/stat``)."""
  try:
    with open("/proc/stat") as f:
      v = [int(x) for x in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  # user nice system irq softirq steal
  return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def load_1m() -> float | None:
  try:
    return os.getloadavg()[0]
  except OSError:
    return None


def machine_load() -> dict[str, Any]:
  """Now: the load averages and the CPU seconds of all processes."""
  try:
    loadavg = [round(x, 2) for x in os.getloadavg()]
  except OSError:
    loadavg = None
  return {"loadavg": loadavg, "busy_s": system_busy_s(), "time": time.time()}


def load_between(start: dict, end: dict) -> dict[str, Any]:
  """Load averages at both ends of a stretch of time, and the share of all
  CPUs that every process together (this one too) kept busy."""
  busy = None
  if start["busy_s"] is not None and end["busy_s"] is not None:
    busy = ((end["busy_s"] - start["busy_s"])
            / max(end["time"] - start["time"], 1e-9) / (os.cpu_count() or 1))
  return {"loadavg_start": start["loadavg"], "loadavg_end": end["loadavg"],
          "all_cpus_busy_frac": None if busy is None else round(busy, 3)}


def rss_peak_reset() -> bool:
  """Resets the kernel's peak-RSS counter (Linux); False where unsupported."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def rss_peak_bytes() -> int:
  line = proc_line("/proc/self/status", "VmHWM:")
  if line:
    return int(line.split()[1]) * 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def jax_device_peak() -> int | None:
  stats = jax.devices()[0].memory_stats()
  return None if not stats else stats.get("peak_bytes_in_use")


class PeakTracker:
  """Peak memory over the phases of one runner: the device's peak where the
  device reports one (``device_peak()``), else the process's peak RSS, reset
  per phase (it counts all the process holds, the other framework too)."""

  def __init__(self, device_peak: Callable[[], int | None] = jax_device_peak):
    self.device_peak, self.peak, self.kind = device_peak, None, None

  @contextlib.contextmanager
  def phase(self):
    device = self.device_peak() is not None
    if not device:
      rss_peak_reset()
    yield
    value = self.device_peak() if device else rss_peak_bytes()
    self.kind = "device_peak" if device else "process_peak_rss"
    if value is not None:
      self.peak = max(self.peak or 0, value)


# ----------------------------------------------------------------------------
# Interleaved blocks.


def block_steps(runners: list, steps: int, min_block_s: float) -> int:
  """Steps per block: at least ``steps``, and enough that the slowest
  runner's block lasts ``min_block_s`` (one more warm step each tells)."""
  if not min_block_s:
    return steps
  slowest = max(runner.run(1) for runner in runners)
  return max(steps, math.ceil(min_block_s / slowest))


def timed_block(runner, steps: int) -> Block:
  """One block of ``steps`` steps, with the CPU others took meanwhile."""
  busy0, own0 = system_busy_s(), time.process_time()
  seconds = runner.run(steps)
  busy1, own1 = system_busy_s(), time.process_time()
  other = None
  if busy0 is not None and busy1 is not None:
    other = max(0.0, ((busy1 - busy0) - (own1 - own0))
                / (seconds * (os.cpu_count() or 1)))
  return Block(runner.batch * steps / seconds, other, load_1m(), steps)


def time_interleaved(runners: list, steps: int, repeats: int, warmup: int,
                     trackers: list, min_block_s: float = 0.0
                     ) -> list[list[Block]]:
  """Warm-up, then ``repeats`` rounds of one block per runner, the order
  reversed every round so that no runner always runs first. Returns each
  runner's blocks, round by round (``paired_ratio`` pairs them)."""
  for runner, tracker in zip(runners, trackers):
    with tracker.phase():
      runner.first_call_s = runner.run(warmup)
    opts = getattr(runner, "options", None)
    if runner.framework == "torch" and opts is not None and opts.compile:
      runner.compile_s = runner.first_call_s  # the first call compiles
  steps = block_steps(runners, steps, min_block_s)
  out = [[] for _ in runners]
  order = list(enumerate(zip(runners, trackers)))
  for r in range(repeats):
    for i, (runner, tracker) in (order if r % 2 == 0 else order[::-1]):
      with tracker.phase():
        out[i].append(timed_block(runner, steps))
  return out


# ----------------------------------------------------------------------------
# Ratios and summaries.


def paired_ratio(a: list[float], b: list[float], confidence: float = 0.95,
                 seed: int = 0) -> dict[str, Any]:
  """``a[i] / b[i]`` over rounds ``i``: the median, its interquartile range
  and a percentile bootstrap CI of the median (None under 3 rounds, or
  where every round agrees). The spread is what pairing did not cancel."""
  r = np.asarray(a, float) / np.asarray(b, float)
  median = float(np.median(r))
  out = {"median": median,
         "iqr": [float(q) for q in np.percentile(r, [25, 75])],
         "ci95": None, "ci95_half_width": None, "num_pairs": int(r.size),
         "per_round": [round(float(x), 4) for x in r]}
  if r.size >= 3 and np.ptp(r) > 0:
    ci = scipy.stats.bootstrap(
        (r,), np.median, confidence_level=confidence, n_resamples=2000,
        method="percentile", rng=np.random.default_rng(seed)
    ).confidence_interval
    out["ci95"] = [float(ci.low), float(ci.high)]
    # As a fraction of the median: the smallest change this job resolves.
    half = float(ci.high - ci.low) / 2 / median
    out["ci95_half_width"] = half
    out["rounds_for_5pct_agreement"] = rounds_for_agreement(half, r.size)
  return out


def rounds_for_agreement(half_width: float, rounds: int,
                         tolerance: float = 0.05) -> int:
  """Rounds two jobs would each need for their medians to agree within
  ``tolerance`` 95% of the time, if their rounds stay as noisy as these: the
  difference of two medians has sqrt(2) times one's error, and a CI shrinks
  as 1/sqrt(rounds). Load that drifts between jobs is not in it."""
  return math.ceil(rounds * (half_width * math.sqrt(2) / tolerance) ** 2)


def quiet_paired_ratio(a: list[Block], b: list[Block]) -> dict | None:
  """``paired_ratio`` over the rounds where both blocks were quiet."""
  pairs = [(x.img_per_s, y.img_per_s) for x, y in zip(a, b)
           if is_quiet(x) and is_quiet(y)]
  return paired_ratio(*zip(*pairs)) if pairs else None


def vs_reference(blocks: list[Block], reference: list[Block]) -> dict:
  """``vs_torch`` and ``vs_torch_quiet`` of a JAX runner's blocks."""
  return {"vs_torch": paired_ratio([b.img_per_s for b in blocks],
                                   [b.img_per_s for b in reference]),
          "vs_torch_quiet": quiet_paired_ratio(blocks, reference)}


def ratios_agree(x: dict | None, y: dict | None) -> bool | None:
  """Whether two ``paired_ratio``s are within noise: their CIs overlap
  (None where either has no CI)."""
  if not x or not y or not x["ci95"] or not y["ci95"]:
    return None
  return x["ci95"][0] <= y["ci95"][1] and y["ci95"][0] <= x["ci95"][1]


def format_ratio(r: dict | None) -> str:
  """``0.640 [0.620, 0.660]``: a ``paired_ratio``'s median and 95% CI."""
  if not r:
    return "-"
  if not r["ci95"]:
    return f"{r['median']:.3f}"
  lo, hi = r["ci95"]
  return f"{r['median']:.3f} [{lo:.3f}, {hi:.3f}]"


def summary(blocks: list[Block]) -> dict[str, Any]:
  """A runner's img/s over its blocks (median, best, quiet), with each
  block's rate, load and the CPU others took."""
  rates = [b.img_per_s for b in blocks]
  quiet = [b.img_per_s for b in blocks if is_quiet(b)]
  return {"img_per_s": statistics.median(rates),
          "img_per_s_best": max(rates),
          "img_per_s_quiet": statistics.median(quiet) if quiet else None,
          "num_quiet_blocks": len(quiet),
          "steps_per_block": blocks[0].steps,
          "img_per_s_repeats": [round(r, 3) for r in rates],
          "other_cpu_frac": [None if b.other_cpu_frac is None
                             else round(b.other_cpu_frac, 3) for b in blocks],
          "load_1m": [round(b.load_1m, 2) for b in blocks
                      if b.load_1m is not None]}


class Budget:
  """Wall-clock budget: a piece of work starts only if it is expected to end
  in time (expected: the longest piece of the same kind so far)."""

  def __init__(self, seconds: float | None,
               clock: Callable[[], float] = time.perf_counter):
    self.seconds, self.clock, self.t0 = seconds, clock, clock()
    self.longest: dict[str, float] = {}

  def left(self) -> float:
    if self.seconds is None:
      return float("inf")
    return self.seconds - (self.clock() - self.t0)

  def allows(self, what: str, estimate: float = 0.0) -> bool:
    return max(self.longest.get(what, 0.0), estimate) < self.left()

  @contextlib.contextmanager
  def piece(self, what: str):
    t0 = self.clock()
    yield
    self.longest[what] = max(self.longest.get(what, 0.0), self.clock() - t0)
