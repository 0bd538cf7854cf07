"""The benchmark's timing harness and statistics, on fake runners and a
fake clock (quick tier)."""

import contextlib

import numpy as np
import pytest

from benchmarks import benchmark
from benchmarks import compare_runs
from benchmarks import timing


class _FakeRunner:
  """Logs each call; a step takes ``step_s`` on a clock the test controls."""

  framework = "fake"
  batch = 2

  def __init__(self, name, step_s, log):
    self.name, self.step_s, self.log = name, step_s, log

  def run(self, num_steps):
    self.log.append((self.name, num_steps))
    return self.step_s * num_steps


def _trackers(n):
  return [timing.PeakTracker(lambda: None) for _ in range(n)]


def test_time_interleaved_alternates_blocks_and_sizes_them_by_time():
  log = []
  jax_like, torch_like = _FakeRunner("a", 0.5, log), _FakeRunner("b", 2.0, log)
  blocks = timing.time_interleaved([jax_like, torch_like], 1, 4, 2,
                                      _trackers(2), min_block_s=5.0)
  # Warm-up, one probe step each, then ceil(5 s / 2 s) = 3 steps per block,
  # the order reversed every round (ABBA...): adjacent blocks pair up.
  assert log == [("a", 2), ("b", 2), ("a", 1), ("b", 1),
                 ("a", 3), ("b", 3), ("b", 3), ("a", 3),
                 ("a", 3), ("b", 3), ("b", 3), ("a", 3)]
  assert [b.steps for b in blocks[0]] == [3] * 4
  assert [b.img_per_s for b in blocks[0]] == [pytest.approx(4.0)] * 4
  assert [b.img_per_s for b in blocks[1]] == [pytest.approx(1.0)] * 4
  # Without a minimum block time, exactly ``steps`` steps and no probe.
  log.clear()
  timing.time_interleaved([jax_like, torch_like], 2, 1, 1, _trackers(2))
  assert log == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]


def test_paired_ratio_cancels_load_shared_by_a_round():
  # Both frameworks slow down together in rounds 2 and 3: the paired ratio
  # stays 0.5, while medians taken apart would not see the pairing.
  jax_rates = [2.0, 1.0, 0.5, 2.0, 2.0]
  torch_rates = [4.0, 2.0, 1.0, 4.0, 4.0]
  r = timing.paired_ratio(jax_rates, torch_rates)
  assert r["median"] == 0.5 and r["iqr"] == [0.5, 0.5]
  assert r["ci95"] is None and r["num_pairs"] == 5  # no spread: no CI
  noisy = timing.paired_ratio([1.0, 1.1, 0.9, 1.05, 0.95, 1.0],
                                 [2.0] * 6)
  assert noisy["median"] == pytest.approx(0.5)
  lo, hi = noisy["ci95"]
  assert 0.45 <= lo <= 0.5 <= hi <= 0.55
  assert noisy["ci95_half_width"] == pytest.approx((hi - lo) / 2 / 0.5)
  # Half-width h over n rounds: n * (h * sqrt(2) / 5%)^2 rounds each.
  assert noisy["rounds_for_5pct_agreement"] == timing.rounds_for_agreement(
      noisy["ci95_half_width"], 6)
  assert timing.rounds_for_agreement(0.05 / 2**0.5, 10) == 10
  assert timing.rounds_for_agreement(0.1 / 2**0.5, 10) == 40
  assert noisy["iqr"] == [pytest.approx(np.percentile(noisy["per_round"], 25)),
                          pytest.approx(np.percentile(noisy["per_round"], 75))]


def test_ratios_agree_when_their_intervals_overlap():
  a = {"ci95": [0.60, 0.66]}
  assert timing.ratios_agree(a, {"ci95": [0.65, 0.70]})
  assert not timing.ratios_agree(a, {"ci95": [0.68, 0.75]})
  assert timing.ratios_agree(a, {"ci95": None}) is None


def test_quiet_paired_ratio_keeps_rounds_where_both_blocks_were_quiet():
  block = timing.Block
  jax_blocks = [block(1.0, 0.0, 1.0, 1), block(3.0, 0.5, 1.0, 1),
                block(2.0, 0.05, 1.0, 1)]
  torch_blocks = [block(2.0, 0.01, 1.0, 1), block(1.0, 0.0, 1.0, 1),
                  block(2.0, 0.3, 1.0, 1)]
  r = timing.quiet_paired_ratio(jax_blocks, torch_blocks)
  assert r["per_round"] == [0.5]
  assert timing.quiet_paired_ratio(jax_blocks[1:], torch_blocks[1:]) is None


def _job(ratios):
  """A benchmark JSON's rows with the given paired medians."""
  return {"results": [
      {"framework": "jax", "step": step, "batch": 8,
       "vs_torch": {"median": median, "ci95": [median * 0.98, median * 1.02]}}
      for step, median in ratios.items()] + [
          {"framework": "torch", "step": "joint", "batch": 8}],
          "analysis": {"joint_step_variants": {"batch": 8, "project": {
              "vs_torch": {"median": 0.7, "ci95": [0.69, 0.71]}}}}}


def test_compare_runs_flags_ratios_more_than_five_percent_apart():
  rows = compare_runs.compare(_job({"joint": 0.60, "eval": 1.00}),
                              _job({"joint": 0.62, "eval": 1.10}))
  by_name = {r["ratio"]: r for r in rows}
  assert by_name["joint batch 8"]["change"] == pytest.approx(0.62 / 0.60 - 1)
  assert by_name["joint batch 8"]["within_tolerance"]
  assert not by_name["eval batch 8"]["within_tolerance"]
  assert by_name["variants: project batch 8"]["change"] == 0.0


def test_compare_runs_spread_over_several_jobs():
  jobs = [_job({"joint": m}) for m in (0.60, 0.66, 0.63)]
  (joint, project) = compare_runs.spread(jobs)
  assert joint["ratio"] == "joint batch 8"
  assert joint["median"] == pytest.approx(0.63)
  assert joint["spread"] == pytest.approx(0.66 / 0.60 - 1)
  assert not joint["within_tolerance"]  # 10% apart
  assert project["spread"] == 0.0 and project["within_tolerance"]
  assert compare_runs.spread(jobs, tolerance=0.11)[0]["within_tolerance"]


def test_row_plan_puts_the_headline_rows_first():
  plan = benchmark.row_plan((10, 256), benchmark.STEP_KINDS, 256)
  assert plan[:3] == [("joint", 256), ("joint", 10), ("eval", 256)]
  assert sorted(plan[3:]) == sorted(
      (k, b) for k in ("classification", "segmentation") for b in (10, 256))
  assert benchmark.steps_per_block({"steps": 20, "min_images_per_block": 2000},
                                   10) == 200
  assert benchmark.steps_per_block({"steps": 20}, 10) == 20


class TenSecondPieces(timing.Budget):
  """A budget on a clock that moves 10 s per piece of work, and only then."""

  def __init__(self, seconds):
    self.now = 0.0
    super().__init__(seconds, clock=lambda: self.now)

  @contextlib.contextmanager
  def piece(self, what):
    with super().piece(what):
      yield
      self.now += 10.0


def test_budget_starts_a_piece_only_if_it_is_expected_to_end_in_time():
  budget = TenSecondPieces(25.0)
  assert budget.allows("train")  # nothing known yet: 0 s < 25 s left
  with budget.piece("train"):
    pass
  assert budget.left() == 15.0 and budget.allows("train")
  assert not budget.allows("analysis", estimate=15.0)
  with budget.piece("train"):
    pass
  assert budget.left() == 5.0 and not budget.allows("train")
  assert budget.allows("eval")  # another kind: no estimate yet
