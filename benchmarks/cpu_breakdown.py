"""Where the ResNet-50 train step spends its CPU time: convolutions vs the rest,
on 1 core and on all of them.

Usage: python -m benchmarks.cpu_breakdown --out FILE.json [--cpus 1 2]
                                         [--batch 8] [--repeats 5]
                                         [--size small|tiny]

For each CPU count a child process is pinned to that many cores (before JAX
and torch start their thread pools) and measures, in float32 at 224 px
(``--size tiny``: the tests' 4-block ResNet at 64 px):

- the classification train step (GAP, CE): the project's resident step,
  compiled with ``cpu_compiler_options()``, and the PyTorch reference (eager,
  channels_last), each timed alone;
- every distinct convolution of that ResNet-50, taken from the jaxpr of the
  backbone's forward pass and timed alone: forward, input gradient and weight
  gradient in JAX (each its own jit, so XLA's layout copies for the weight
  gradient are included), forward and forward + backward in torch. Times are
  summed over the network with each convolution's multiplicity.

Step time minus convolution time is what the step spends elsewhere (batch
norm, ReLU, max pool, residual adds, layout copies between ops, dropout, the
optimizer). The stem convolution's input gradient is not computed by either
step, so it is not timed. A traced run of the JAX step then splits its
thread time by XLA:CPU thunk kind (``thunk_trace``).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _median_ms(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


def _conv_eqns(jaxpr):
  """Every ``conv_general_dilated`` equation of a jaxpr, sub-jaxprs included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          yield from _conv_eqns(sub)


def network_convolutions(model, variables, batch: int, crop: int):
  """Distinct convolutions of ``model``'s backbone forward, with counts.

  Returns ``[(lhs_shape, rhs_shape, params, count)]``; ``params`` are the
  equation's own, so replaying them reproduces the network's convolution.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  backbone = {k: v["backbone"] for k, v in variables.items()}
  jaxpr = jax.make_jaxpr(
      lambda v, x: model.backbone.apply(v, x, train=False))(
          backbone, jnp.zeros((batch, crop, crop, 3), jnp.float32))
  counts = collections.Counter()
  found = {}
  for eqn in _conv_eqns(jaxpr.jaxpr):
    lhs, rhs = (tuple(v.aval.shape) for v in eqn.invars)
    key = (lhs, rhs, repr(sorted(eqn.params.items())))
    counts[key] += 1
    found[key] = (lhs, rhs, dict(eqn.params))
  return [(*found[k], n) for k, n in counts.items()]


def _time_jax_conv(lhs, rhs, params, repeats: int, input_grad: bool):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  from rapool_jax import xla_flags  # pylint: disable=g-import-not-at-top
  params = {**params, "preferred_element_type": None}
  conv = lambda x, w: lax.conv_general_dilated_p.bind(x, w, **params)
  rng = np.random.default_rng(0)
  x = jax.numpy.asarray(rng.standard_normal(lhs, np.float32))
  w = jax.numpy.asarray(0.05 * rng.standard_normal(rhs, np.float32))
  dy = jax.numpy.ones(jax.eval_shape(conv, x, w).shape, np.float32)
  # The same XLA:CPU options as the step (Eigen convolutions).
  jit = functools.partial(jax.jit,
                          compiler_options=xla_flags.cpu_compiler_options())
  fwd = jit(conv)
  dx = jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
  dw = jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
  run = lambda f, *a: lambda: jax.block_until_ready(f(*a))
  return {"fwd_ms": _median_ms(run(fwd, x, w), repeats),
          "dx_ms": (_median_ms(run(dx, x, w, dy), repeats) if input_grad
                    else 0.0),
          "dw_ms": _median_ms(run(dw, x, w, dy), repeats)}


def torch_conv(params):
  """``(x [N, C, H, W], w [O, I, kh, kw]) -> y``: the jaxpr convolution with
  ``params`` (NHWC/HWIO in JAX) as a torch function."""
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  if (tuple(params["lhs_dilation"]) != (1, 1)
      or params["feature_group_count"] != 1):
    raise ValueError(f"no torch equivalent for conv params {params}")
  (top, bottom), (left, right) = params["padding"]
  symmetric = top == bottom and left == right
  kwargs = dict(stride=tuple(params["window_strides"]),
                dilation=tuple(params["rhs_dilation"]),
                padding=(top, left) if symmetric else 0)

  def conv(x, w):
    x = x if symmetric else F.pad(x, (left, right, top, bottom))
    return F.conv2d(x, w, **kwargs)
  return conv


def _time_torch_conv(lhs, rhs, params, repeats: int, input_grad: bool):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  conv = torch_conv(params)
  cl = torch.channels_last
  rng = np.random.default_rng(0)
  x = torch.tensor(rng.standard_normal(lhs, np.float32)).permute(0, 3, 1, 2)
  x = x.contiguous(memory_format=cl).requires_grad_(input_grad)
  w = torch.tensor(0.05 * rng.standard_normal(rhs, np.float32))
  w = w.permute(3, 2, 0, 1).contiguous(memory_format=cl).requires_grad_(True)
  dy = torch.ones_like(conv(x, w)).contiguous(memory_format=cl)
  inputs = [x, w] if input_grad else [w]

  def fwd():
    with torch.no_grad():
      conv(x, w)

  def fwd_bwd():
    torch.autograd.grad(conv(x, w), inputs, dy)

  fwd_ms = _median_ms(fwd, repeats)
  return {"fwd_ms": fwd_ms,
          "bwd_ms": _median_ms(fwd_bwd, repeats) - fwd_ms}


# XLA:CPU thunk names (numeric suffixes dropped) -> what they are.
_THUNK_KINDS = (
    (("convolution", "conv_general_dilated"), "convolution"),
    (("dot",), "dot (1x1 convolutions, classifier)"),
    (("transpose",), "layout transpose"),
    (("wrapped_reduce-window", "wrapped_iota", "wrapped_scatter"),
     "max pool (reduce_window, select_and_scatter)"),
    (("ynn_fusion", "wrapped_reduce", "reduce"), "reduction (BatchNorm "
                                                 "statistics, GAP)"),
    (("copy", "wrapped_copy"), "copy"),
)
# Scheduling and waiting, not work.
_THUNK_WAITS = ("ThunkExecutor::", "SlinkyThreadPool::", "end:")


def thunk_kind(name: str) -> str | None:
  """The kind of an XLA:CPU thunk trace event, None for executor bookkeeping."""
  if name.startswith(_THUNK_WAITS):
    return None
  base = re.sub(r"[.\d]+$", "", name)
  for prefixes, kind in _THUNK_KINDS:
    if base.startswith(prefixes):
      return kind
  return ("elementwise fusion (BatchNorm, ReLU, adds, dropout, optimizer)"
          if "fusion" in base else "other")


def trace_step(size_name: str, batch: int, steps: int = 3) -> dict:
  """Thread-ms per step by thunk kind, from XLA:CPU's TraceMe events.

  With several threads, Eigen's convolutions and dots run inside the pool's
  own tasks and are not traced as thunks: they are in ``untraced_ms`` (with
  idle time), which is ``threads x wall - traced``.
  """
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  from benchmarks import benchmark  # pylint: disable=g-import-not-at-top
  from rapool_jax import xla_flags  # pylint: disable=g-import-not-at-top
  config = benchmark.make_config(dict(benchmark.SIZES[size_name]), "float32")
  options = {**xla_flags.cpu_compiler_options("cpu"),
             "xla_cpu_enable_xprof_traceme": True}
  runner = benchmark.JaxTrainRunner(config, "classification", batch,
                                    compiler_options=options)
  runner.run(1)
  wall, xspace = benchmark.traced(lambda: runner.run(steps))
  profile = ProfileData.from_serialized_xspace(xspace)
  per_kind = collections.Counter()
  for plane in profile.planes:
    for line in plane.lines:
      if "XLAEigen" not in line.name and "PjRt" not in line.name:
        continue
      for event in line.events:
        kind = thunk_kind(event.name)
        if kind:
          per_kind[kind] += event.duration_ns / 1e6 / steps
  threads = len(os.sched_getaffinity(0))
  traced = sum(per_kind.values())
  return {"wall_ms_per_step": 1e3 * wall / steps, "threads": threads,
          "thread_ms_per_step": dict(per_kind.most_common()),
          "untraced_ms": threads * 1e3 * wall / steps - traced}


def _step_img_per_s(runner, batch: int, repeats: int) -> float:
  runner.run(1)
  return batch / statistics.median(runner.run(1) for _ in range(repeats))


def measure(size_name: str, batch: int, repeats: int) -> dict:
  """The child's work: steps and convolutions on this process's cores."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import benchmark  # pylint: disable=g-import-not-at-top
  from rapool_jax import xla_flags  # pylint: disable=g-import-not-at-top
  from rapool_jax.models import rapool_net  # pylint: disable=g-import-not-at-top

  cpus = len(os.sched_getaffinity(0))
  torch.set_num_threads(cpus)
  size = dict(benchmark.SIZES[size_name])
  config = benchmark.make_config(size, "float32")
  crop = size["crop"]

  jax_step = benchmark.JaxTrainRunner(
      config, "classification", batch,
      compiler_options=xla_flags.cpu_compiler_options("cpu"))
  jax_rate = _step_img_per_s(jax_step, batch, repeats)
  del jax_step
  torch_step = benchmark.TorchTrainRunner(size, "classification", batch,
                                          amp=False, compile_model=False)
  torch_rate = _step_img_per_s(torch_step, batch, repeats)
  del torch_step

  model = rapool_net.build_model(config.model, config.systems)
  variables = benchmark.init_variables(model, crop)
  convs = []
  totals = collections.Counter()
  for lhs, rhs, params, count in network_convolutions(model, variables,
                                                      batch, crop):
    input_grad = lhs[-1] != 3   # the stem's input gradient is never needed
    row = {"lhs": list(lhs), "rhs": list(rhs),
           "strides": list(params["window_strides"]),
           "rhs_dilation": list(params["rhs_dilation"]), "count": count,
           "jax": _time_jax_conv(lhs, rhs, params, repeats, input_grad),
           "torch": _time_torch_conv(lhs, rhs, params, repeats, input_grad)}
    convs.append(row)
    for fw in ("jax", "torch"):
      for k, v in row[fw].items():
        totals[f"{fw}_{k}"] += count * v
  jax_conv = totals["jax_fwd_ms"] + totals["jax_dx_ms"] + totals["jax_dw_ms"]
  torch_conv = totals["torch_fwd_ms"] + totals["torch_bwd_ms"]
  jax_step_ms, torch_step_ms = 1e3 * batch / jax_rate, 1e3 * batch / torch_rate
  return {
      "cpus": cpus, "size": size_name, "depth": str(size["depth"]),
      "batch": batch, "image_size": crop, "dtype": "float32",
      "xla_threads_note": "XLA:CPU sizes its pool from the process's CPU "
                          "affinity; torch.set_num_threads(cpus)",
      "step": {"jax_img_per_s": jax_rate, "torch_img_per_s": torch_rate,
               "jax_over_torch": jax_rate / torch_rate,
               "jax_ms": jax_step_ms, "torch_ms": torch_step_ms},
      "convolutions_ms": {"jax": jax_conv, "torch": torch_conv,
                          **totals},
      "outside_convolutions_ms": {"jax": jax_step_ms - jax_conv,
                                  "torch": torch_step_ms - torch_conv},
      "num_convolutions": sum(r["count"] for r in convs),
      "per_convolution": convs,
      "versions": {"jax": jax.__version__, "torch": torch.__version__},
  }


def _child(args) -> None:
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cpus[0]])
  out = measure(args.size, args.batch, args.repeats)
  out["thunk_trace"] = trace_step(args.size, args.batch)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--cpus", type=int, nargs="+",
                      default=sorted({1, len(os.sched_getaffinity(0))}))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--size", choices=("small", "tiny"), default="small",
                      help="small: ResNet-50 at 224; tiny: for tests")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    _child(args)
    return
  available = len(os.sched_getaffinity(0))
  if max(args.cpus) > available or min(args.cpus) < 1:
    parser.error(f"--cpus must be between 1 and {available}, got {args.cpus}")
  out_dir = os.path.dirname(os.path.abspath(args.out))
  if not os.path.isdir(out_dir):
    parser.error(f"--out: directory {out_dir} does not exist")

  from benchmarks import benchmark  # pylint: disable=g-import-not-at-top
  result = {"what": __doc__.split("\n\n")[0].replace("\n", " "),
            "date": time.strftime("%Y-%m-%d"),
            "device": benchmark.device_info(), "runs": []}
  for cpus in args.cpus:
    with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
      cmd = [sys.executable, os.path.abspath(__file__), "--child",
             "--cpus", str(cpus), "--batch", str(args.batch),
             "--repeats", str(args.repeats), "--size", args.size,
             "--out", tmp.name]
      t0 = time.perf_counter()
      if subprocess.run(cmd, check=False).returncode:
        sys.exit(f"cpu_breakdown: the {cpus}-CPU run failed; its error is "
                 "printed above")
      with open(tmp.name) as f:
        run = json.load(f)
    run["wall_s"] = time.perf_counter() - t0
    result["runs"].append(run)
    s, c, o = run["step"], run["convolutions_ms"], run["outside_convolutions_ms"]
    print(f"{cpus} CPU(s): step JAX {s['jax_img_per_s']:.2f} img/s, torch "
          f"{s['torch_img_per_s']:.2f} img/s (JAX/torch "
          f"{s['jax_over_torch']:.2f}); per step, convolutions JAX "
          f"{c['jax']:.0f} ms vs torch {c['torch']:.0f} ms, everything else "
          f"JAX {o['jax']:.0f} ms vs torch {o['torch']:.0f} ms", flush=True)
    trace = run["thunk_trace"]
    print(f"  JAX step thunk trace ({trace['wall_ms_per_step']:.0f} ms/step "
          f"x {trace['threads']} threads; untraced "
          f"{trace['untraced_ms']:.0f} thread-ms): " + ", ".join(
              f"{k} {v:.0f}" for k, v in trace["thread_ms_per_step"].items()),
          flush=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
