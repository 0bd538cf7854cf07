"""Times RankOpt ``fit`` against class-weighted logistic regression.

Usage: python -m benchmarks.rankopt_benchmark [--out FILE.json] [--repeats 5]
                                             [--radius-scale 10]

Synthetic stand-in for the paper's setting: 2000 x 2048 pooled CNN features
(non-negative, correlated through 64 latent factors) with 374 positives, as
in ISIC 2017 training. Both classifiers are timed after a warm-up call (for
RankOpt that call compiles); the median of ``--repeats`` runs is reported.

Extra memory is peak resident memory during one call (after a warm-up call)
minus resident memory just before it, measured in a separate process per
classifier started with glibc's MALLOC_MMAP_THRESHOLD_=65536: every large
buffer is then mmap'd and unmapped on free, whereas by default buffers freed
by the warm-up stay in malloc's heap, are reused, and the delta reads near
zero (timing runs without it: mmap page faults would slow both methods). The
peak is read two ways: the kernel's VmHWM after resetting it through
/proc/self/clear_refs (exact; Linux only), and psutil RSS sampled every
millisecond in a thread (a lower bound; the fallback elsewhere).
tracemalloc would miss XLA's allocations, which are not Python objects.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import psutil
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmarks import timing
from rapool_jax import rankopt


_MMAP_ENV = 'MALLOC_MMAP_THRESHOLD_'


def make_features(n=2000, d=2048, n_pos=374, seed=0):
  """Mildly separable, non-negative, correlated features. -> [n, d], [n]."""
  rng = np.random.default_rng(seed)
  labels = np.zeros(n, np.int32)
  labels[rng.permutation(n)[:n_pos]] = 1
  loadings = rng.normal(size=(64, d)) / 8.0
  latent = rng.normal(size=(n, 64))
  # Positives shift along a few latent factors: a real but weak signal.
  latent[:, :4] += 0.5 * labels[:, None]
  x = latent @ loadings + 0.5 * rng.normal(size=(n, d))
  return np.maximum(x, 0.0).astype(np.float32), labels


def _rss():
  return psutil.Process().memory_info().rss


def time_it(fn, repeats):
  """(median s of ``repeats`` calls after a warm-up, warm-up s, result)."""
  start = time.perf_counter()
  result = fn()  # Warm-up: compilation, caches, lazy imports.
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), first, result


def peak_extra(fn):
  """(extra bytes via VmHWM or None, via 1 ms RSS sampling) of one warm call."""
  fn()
  # Buffers of the warm-up call may be released asynchronously; let that
  # finish so that "before" does not include them.
  gc.collect()
  time.sleep(0.5)
  peak = [0]
  stop = threading.Event()

  def sample():
    while not stop.is_set():
      peak[0] = max(peak[0], _rss())
      time.sleep(0.001)

  hwm_ok = timing.rss_peak_reset()
  before = _rss()
  thread = threading.Thread(target=sample, daemon=True)
  thread.start()
  fn()
  stop.set()
  thread.join()
  hwm_extra = timing.rss_peak_bytes() - before if hwm_ok else None
  return hwm_extra, max(peak[0], _rss()) - before


def _runners(x, y, radius_scale):
  def run_rankopt():
    res = rankopt.fit(x, y, radius_scale=radius_scale)
    jax.block_until_ready(res.beta)
    return res

  def run_logreg():
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(class_weight='balanced', solver='lbfgs',
                           max_iter=10_000))
    return model.fit(x, y)

  return {'rankopt': run_rankopt, 'logreg': run_logreg}


def memory_in_child(name, radius_scale):
  """``peak_extra`` in a fresh process, large buffers forced to mmap."""
  env = dict(os.environ, **{_MMAP_ENV: '65536'})
  out = subprocess.run(
      [sys.executable, '-m', 'benchmarks.rankopt_benchmark', '--memory-child',
       name,
       '--radius-scale', str(radius_scale)],
      env=env, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def measure(x, y, args) -> dict:
  """Both classifiers' time, extra memory, train AUC and iterations."""
  fits = _runners(x, y, args.radius_scale)
  ro_t, ro_first, ro = time_it(fits['rankopt'], args.repeats)
  lr_t, lr_first, lr = time_it(fits['logreg'], args.repeats)
  ro_hwm, ro_smp = memory_in_child('rankopt', args.radius_scale)
  lr_hwm, lr_smp = memory_in_child('logreg', args.radius_scale)
  lr_iter = int(lr[-1].n_iter_[0])
  mib = lambda b: None if b is None else b / 2**20  # noqa: E731
  return {
      'rankopt': {'seconds_median': ro_t, 'first_call_seconds': ro_first,
                  'extra_mib_vmhwm': mib(ro_hwm),
                  'extra_mib_sampled': mib(ro_smp),
                  'train_auc': roc_auc_score(y, np.asarray(
                      rankopt.decision_function(ro, x))),
                  'steps': ro.num_steps, 'converged': ro.converged,
                  'radius': ro.radius, 'radius_scale': args.radius_scale},
      'logreg': {'seconds_median': lr_t, 'first_call_seconds': lr_first,
                 'extra_mib_vmhwm': mib(lr_hwm),
                 'extra_mib_sampled': mib(lr_smp),
                 'train_auc': roc_auc_score(y, lr.decision_function(x)),
                 'iterations': lr_iter, 'converged': lr_iter < 10_000},
      'time_ratio_rankopt_over_logreg': ro_t / lr_t,
      'method': (
          f'time: median of {args.repeats} runs after one warm-up run; extra '
          'memory (separate process per classifier, glibc '
          f'{_MMAP_ENV}=65536, after one warm-up run) = peak RSS during one '
          'call minus RSS before it: VmHWM after resetting it via '
          '/proc/self/clear_refs, and psutil RSS sampled every 1 ms')}


def print_figures(figures: dict) -> None:
  ro, lr = figures['rankopt'], figures['logreg']
  fmt = lambda v: 'n/a' if v is None else f'{v:8.1f}'  # noqa: E731
  print(f"{'':10s} {'seconds':>8s} {'MiB(HWM)':>9s} {'MiB(smp)':>9s} "
        f"{'train AUC':>9s}  iterations")
  print(f"{'RankOpt':10s} {ro['seconds_median']:8.3f} "
        f"{fmt(ro['extra_mib_vmhwm']):>9s} {fmt(ro['extra_mib_sampled']):>9s} "
        f"{ro['train_auc']:9.4f}  {ro['steps']} "
        f"(converged={ro['converged']}, B={ro['radius']:.4g})")
  print(f"{'LogReg':10s} {lr['seconds_median']:8.3f} "
        f"{fmt(lr['extra_mib_vmhwm']):>9s} {fmt(lr['extra_mib_sampled']):>9s} "
        f"{lr['train_auc']:9.4f}  {lr['iterations']}")
  print(f"time ratio RankOpt / LogReg: "
        f"{figures['time_ratio_rankopt_over_logreg']:.2f}; first calls "
        f"(RankOpt compiles): {ro['first_call_seconds']:.2f} s / "
        f"{lr['first_call_seconds']:.2f} s")
  print(figures['method'])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', help='write the figures as JSON here')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--radius-scale', type=float, default=10.0,
                      help='rankopt.fit radius_scale')
  parser.add_argument('--memory-child', help=argparse.SUPPRESS)
  args = parser.parse_args()
  x, y = make_features()
  if args.memory_child:
    print(json.dumps(peak_extra(_runners(x, y, args.radius_scale)[
        args.memory_child])))
    return
  figures = {
      'command': ' '.join(['python -m benchmarks.rankopt_benchmark']
                          + sys.argv[1:]),
      'data': {'n': int(x.shape[0]), 'd': int(x.shape[1]),
               'positives': int(y.sum())},
      **measure(x, y, args),
      'machine': {'cpus': os.cpu_count(), 'loadavg': os.getloadavg(),
                  'platform': platform.platform(),
                  'jax': jax.__version__, 'backend': jax.default_backend()}}
  print_figures(figures)
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(figures, f, indent=2)
      f.write('\n')


if __name__ == '__main__':
  main()
