"""Where a train step's device time goes: JAX against the PyTorch reference,
by kind of work, from one profiler trace of each.

Usage: python -m benchmarks.step_profile --out DIR [--size full|small|tiny]
           [--step joint] [--batches 256 10] [--steps 5] [--no-torch]

For each batch, the project's JAX step (``benchmark.JaxTrainRunner``) and the
PyTorch reference (``benchmark.TorchTrainRunner``, with ``torch.compile`` on a
GPU) are warmed up, then ``--steps`` steps of each are traced
(``jax.profiler``, ``torch.profiler``). Device time per step is split into
``KINDS``: convolutions, matmuls, elementwise work (BatchNorm apply, ReLU,
adds, dropout masks, the optimizer), reductions (BatchNorm statistics,
pooling, losses), max pool, random bits, gathers (augmentation), layout
copies and the rest.

- JAX on a GPU: each kernel carries the ``hlo_op`` it runs for. That op is
  looked up in the optimised HLO and classified by what it computes
  (``hlo_op_kinds``), so fusion names do not matter.
- JAX on a CPU: XLA:CPU thunks are named after their HLO op and classified
  the same way. With several threads, Eigen's convolutions run inside the
  pool's own tasks and are not traced as thunks.
- torch: GPU kernels are classified by name (``torch_kind``). On a CPU, ops
  are classified by name and counted by their self time.

Each framework also reports the wall time per step (traced and untraced),
kernels per step and, on a GPU, busy time: the union of kernel intervals.
``wall - busy`` is the time the GPU waits for the host (launches, Python).
Writes ``DIR/step_profile.json``, JAX's optimised HLO and xplane trace
(gzipped; ``ProfileData.from_serialized_xspace`` reads it back) for later
analysis, and prints a side-by-side table.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import sys
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

KINDS = ("convolution", "matmul", "elementwise", "reduction", "max pool",
         "random bits", "gather/scatter", "layout copy", "other")

# ----------------------------------------------------------------------------
# Classifying XLA's HLO ops by what they compute.

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"([a-z][a-z0-9\-]*)\(")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
# Ops that only move or reinterpret data.
_DATA_MOVEMENT = {"copy", "transpose", "bitcast", "reshape", "broadcast",
                  "parameter", "constant", "tuple", "get-tuple-element",
                  "slice", "concatenate", "pad", "dynamic-slice",
                  "dynamic-update-slice", "copy-start", "copy-done"}


def _parse_hlo(hlo_text: str):
  """``{computation: [(name, opcode, calls, custom-call target)]}`` and
  ``{computation: its root's opcode}``."""
  computations, roots, current = {}, {}, None
  for line in hlo_text.splitlines():
    if not line.startswith(" "):
      m = _COMPUTATION.match(line)
      current = m.group(1) if m else None
      if current:
        computations.setdefault(current, [])
      continue
    m = _INSTRUCTION.match(line)
    if current is None or not m:
      continue
    name, rest = m.groups()
    op = _OPCODE.search(rest)
    op = op.group(1) if op else ""
    target = _TARGET.search(rest)
    computations[current].append((name, op, _CALLS.findall(rest),
                                  target.group(1) if target else ""))
    if line.lstrip().startswith("ROOT"):
      roots[current] = op
  return computations, roots


def _kind(ops: set[str], targets: set[str], root: str) -> str:
  targets_lower = " ".join(targets).lower()
  if "convolution" in ops or "conv" in targets_lower:
    return "convolution"
  if "dot" in ops or re.search(r"gemm|cublas|matmul", targets_lower):
    return "matmul"
  if ops & {"reduce-window", "select-and-scatter"}:
    return "max pool"
  if ops & {"gather", "scatter"}:
    return "gather/scatter"
  if ("rng-bit-generator" in ops or "threefry" in targets_lower
      or {"xor", "shift-right-logical"} <= ops):
    return "random bits"
  if "reduce" in ops:
    return "reduction"
  # A fusion that ends in a transpose exists for the layout change, whatever
  # producers XLA copied into it (XLA:CPU recomputes BatchNorm chains there).
  if ops <= _DATA_MOVEMENT or root in ("transpose", "copy"):
    return "layout copy"
  return "elementwise"


# Instructions that only run other instructions, which are traced themselves.
_CONTAINERS = {"while", "call", "conditional", "async-start", "async-done"}


def hlo_op_kinds(hlo_text: str) -> dict[str, str | None]:
  """Kind (one of ``KINDS``) of every instruction of an optimised HLO module.

  A fusion or custom call is classified by the ops it contains, nested
  computations included (``_kind`` gives the precedence). Containers
  (``while``, ``call``, ...) map to None: their bodies are traced op by op.
  """
  computations, roots = _parse_hlo(hlo_text)
  contents = {}

  def ops_of(comp, seen=()):
    if comp in contents:
      return contents[comp]
    ops, targets = set(), set()
    for _, op, calls, target in computations.get(comp, ()):
      ops.add(op)
      if target:
        targets.add(target)
      for callee in calls:
        if callee not in seen:
          o, t = ops_of(callee, seen + (comp,))
          ops |= o
          targets |= t
    contents[comp] = (ops, targets)
    return ops, targets

  kinds = {}
  for comp, instructions in computations.items():
    for name, op, calls, target in instructions:
      if op in _CONTAINERS:
        kinds[name] = None
        continue
      ops, targets = {op}, {target} if target else set()
      root = roots.get(calls[0], op) if op == "fusion" and calls else op
      for callee in calls:
        o, t = ops_of(callee)
        ops |= o
        targets |= t
      if op in ("reduce", "reduce-window", "select-and-scatter"):
        # Their to_apply is a scalar add/max, not a separate piece of work.
        ops = {op}
      kinds[name] = _kind(ops - {"parameter"} or {op}, targets, root)
  return kinds


# ----------------------------------------------------------------------------
# Classifying torch kernels and ops by name.

_TORCH_KINDS = (
    # Inductor's generated kernels first: their names list the aten ops
    # they fused, "convolution_backward" included.
    (r"^triton_\w*(bernoulli|rand)", "random bits"),
    (r"^triton_\w*max_pool", "max pool"),
    (r"^triton_\w*grid_sampler", "gather/scatter"),
    (r"^triton_tem_", "matmul"),   # template GEMMs
    (r"^triton_(red|per)_", "reduction"),
    (r"^triton_", "elementwise"),
    (r"max_pool|maxpool", "max pool"),
    (r"bernoulli|philox|distribution_|\brand", "random bits"),
    # cuBLAS GEMM kernels are "xmma" too: only cuDNN's conv names here.
    (r"conv|fprop|dgrad|wgrad|winograd|implicit_gemm|implicit_precomp|"
     r"nhwckrsc|cudnn(?!::bn_)", "convolution"),
    (r"gemm|cublas|cutlass|aten::(addmm|mm|bmm|linear|matmul)\b", "matmul"),
    (r"grid_sample|gather|scatter|index", "gather/scatter"),
    (r"reduce|collect_statistics|welford|aten::(sum|mean|var|std|amax|max"
     r"|nll_loss\w*|_log_softmax\w*|cross_entropy\w*)\b", "reduction"),
    (r"memcpy|memset|copy|transpose|contiguous|clone|aten::(cat|to"
     r"|_to_copy)\b", "layout copy"),
    (r"elementwise|batch_norm|foreach|sgd|aten::(add|mul|sub|div|relu"
     r"|threshold\w*|where|addcmul|lerp|fill)\w*", "elementwise"),
)


def torch_kind(name: str) -> str:
  """Kind (one of ``KINDS``) of a torch kernel or op, from its name."""
  for pattern, kind in _TORCH_KINDS:
    if re.search(pattern, name, re.IGNORECASE):
      return kind
  return "other"


# ----------------------------------------------------------------------------
# Summaries.


def union_ns(intervals) -> float:
  """Total length of the union of ``[(start, end)]`` intervals."""
  total, end_max = 0.0, None
  for start, end in sorted(intervals):
    if end_max is None or start > end_max:
      total += end - start
      end_max = end
    elif end > end_max:
      total += end - end_max
      end_max = end
  return total


def summarise(events, steps: int, wall_s: float, top: int = 30) -> dict:
  """``events``: ``[(name, kind, start_ns, duration_ns)]`` of ``steps`` steps.

  Returns ms per step by kind, kernel count, busy time (union of the
  intervals), traced wall time and the ``top`` names by time.
  """
  per_kind = collections.Counter()
  per_name = collections.defaultdict(lambda: [0.0, 0, ""])
  for name, kind, _, dur in events:
    per_kind[kind] += dur / 1e6 / steps
    entry = per_name[name]
    entry[0] += dur / 1e6 / steps
    entry[1] += 1
    entry[2] = kind
  busy = union_ns((s, s + d) for _, _, s, d in events) / 1e6 / steps
  names = sorted(per_name.items(), key=lambda kv: -kv[1][0])[:top]
  return {
      "ms_per_step_by_kind": {k: per_kind.get(k, 0.0) for k in KINDS},
      "kernel_ms_per_step": sum(per_kind.values()),
      "busy_ms_per_step": busy,
      "wall_ms_per_step_traced": 1e3 * wall_s / steps,
      "kernels_per_step": len(events) / steps,
      "top": [{"name": n, "kind": k, "ms_per_step": ms, "calls_per_step":
               c / steps} for n, (ms, c, k) in names],
  }


# ----------------------------------------------------------------------------
# Tracing.


_DERIVED_GPU_LINES = ("XLA Modules", "XLA Ops", "Steps", "Framework Ops",
                      "Framework Name Scope", "Source code", "Launch Stats",
                      "XLA TraceMe")


def _sanitised(name: str) -> str:
  # XLA names a fusion's GPU kernel after the instruction, '.' -> '_'.
  return re.sub(r"[.\-]", "_", name)


def _xplane_events(profile, kinds: dict[str, str | None], on_gpu: bool):
  """``[(hlo op, kind, start_ns, duration_ns)]`` of a JAX trace.

  GPU kernels are matched through their ``hlo_op`` stat, then their name (a
  kernel launched inside a command buffer may carry the buffer's op), then
  classified by name like torch's. CPU thunks are named after their op.
  """
  by_kernel_name = {_sanitised(k): v for k, v in kinds.items() if v}
  events = []
  for plane in profile.planes:
    if on_gpu and not plane.name.startswith("/device:GPU"):
      continue
    lines = list(plane.lines)
    if on_gpu:
      # Kernels and copies are on the "Stream #N" lines; lines such as
      # "XLA Ops" or "XLA Modules" are derived from them and would count
      # the same time again.
      lines = [l for l in lines if "stream" in l.name.lower()] or [
          l for l in lines if l.name not in _DERIVED_GPU_LINES]
    for line in lines:
      for e in line.events:
        if on_gpu:
          stats = dict(e.stats)
          op = str(stats.get("hlo_op") or "")
          kind = (kinds.get(op) or by_kernel_name.get(_sanitised(e.name))
                  or torch_kind(e.name))
          events.append((op or e.name, kind, e.start_ns, e.duration_ns))
        elif kinds.get(e.name):   # an XLA:CPU thunk, not a container
          events.append((e.name, kinds[e.name], e.start_ns, e.duration_ns))
  return events


def profile_jax(runner, steps: int, save_dir: str | None = None) -> dict:
  """Traces ``steps`` steps of a warmed-up ``JaxTrainRunner``."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  from benchmarks import benchmark  # pylint: disable=g-import-not-at-top
  on_gpu = jax.devices()[0].platform == "gpu"
  hlo = runner.compiled.as_text()
  kinds = hlo_op_kinds(hlo)
  untraced_s = runner.run(steps)
  wall, xspace = benchmark.traced(lambda: runner.run(steps))
  profile = ProfileData.from_serialized_xspace(xspace)
  if save_dir:
    # Gzipped: a leased GPU returns files of at most 16 MiB.
    with gzip.open(os.path.join(save_dir, "jax.xplane.pb.gz"), "wb") as f:
      f.write(xspace)
    with gzip.open(os.path.join(save_dir, "jax_optimised_hlo.txt.gz"),
                   "wt") as f:
      f.write(hlo)
  events = _xplane_events(profile, kinds, on_gpu)
  if not events:
    raise RuntimeError("the JAX trace holds no device events (on a GPU, "
                       "CUPTI may be missing); planes: " + ", ".join(
                           f"{p.name} [{', '.join(l.name for l in p.lines)}]"
                           for p in profile.planes)[:400])
  out = summarise(events, steps, wall)
  out["wall_ms_per_step"] = 1e3 * untraced_s / steps
  if not on_gpu:
    # Thread time of traced thunks; busy/union is not meaningful here.
    out["note"] = ("XLA:CPU thunk thread-ms; with several threads Eigen "
                   "convolutions and dots run untraced inside the pool")
  return out


def _torch_events(function_events, on_gpu: bool, device_types):
  """``[(name, kind, start_ns, duration_ns)]`` of torch profiler events: GPU
  kernels and copies on a GPU, ops by self time on a CPU."""
  events = []
  for e in function_events:
    if on_gpu and e.device_type == device_types.CUDA:
      events.append((e.name, torch_kind(e.name), e.time_range.start * 1e3,
                     (e.time_range.end - e.time_range.start) * 1e3))
    elif not on_gpu and e.device_type == device_types.CPU:
      # Self time, so nested ops are not counted twice; no meaningful start.
      events.append((e.name, torch_kind(e.name), 0.0,
                     e.self_cpu_time_total * 1e3))
  return events


def profile_torch(runner, steps: int) -> dict:
  """Traces ``steps`` steps of a warmed-up ``TorchTrainRunner``."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.autograd import DeviceType  # pylint: disable=g-import-not-at-top
  on_gpu = runner.device.type == "cuda"
  untraced_s = runner.run(steps)
  activities = [torch.profiler.ProfilerActivity.CPU]
  if on_gpu:
    activities.append(torch.profiler.ProfilerActivity.CUDA)
  with torch.profiler.profile(activities=activities) as prof:
    wall = runner.run(steps)
  events = _torch_events(prof.events(), on_gpu, DeviceType)
  if not events:
    raise RuntimeError("the torch trace holds no "
                       + ("CUDA kernels (CUPTI may be missing)" if on_gpu
                          else "CPU ops"))
  out = summarise(events, steps, wall)
  out["wall_ms_per_step"] = 1e3 * untraced_s / steps
  if not on_gpu:
    out["note"] = "self CPU time of torch ops; busy is not meaningful on CPU"
    out["busy_ms_per_step"] = None
  return out


def _or_error(fn) -> dict:
  """``fn()``, or ``{"error": ...}`` if it raises: a profiler that fails on
  one framework must not cost the other's data."""
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    return {"error": f"{type(e).__name__}: {str(e)[:500]}"}


def profile_batch(config, size: dict, step: str, batch: int, steps: int,
                  with_torch: bool, save_dir: str | None, log=print) -> dict:
  """Both frameworks' profiles of one step kind at one batch."""
  import gc  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import benchmark  # pylint: disable=g-import-not-at-top
  out = {"step": step, "batch": batch, "steps": steps}
  options = benchmark.cpu_compiler_options(jax.devices()[0].platform)
  if not jax.devices()[0].platform == "gpu":
    options = {**options, "xla_cpu_enable_xprof_traceme": True}

  def jax_profile():
    runner = benchmark.JaxTrainRunner(config, step, batch,
                                      compiler_options=options)
    runner.run(size["warmup"])
    return {**profile_jax(runner, steps, save_dir),
            "compile_s": runner.compile_s}

  def torch_profile():
    from benchmarks import torch_reference as tr  # pylint: disable=g-import-not-at-top,line-too-long
    compile_model = tr.default_device().type == "cuda"
    runner = benchmark.TorchTrainRunner(
        size, step, batch, amp=config.model.dtype == "bfloat16",
        compile_model=compile_model)
    t0 = time.perf_counter()
    runner.run(size["warmup"])
    return {**profile_torch(runner, steps), "compile": compile_model,
            "warmup_s": time.perf_counter() - t0}

  out["jax"] = _or_error(jax_profile)
  gc.collect()
  log(f"  {step} b{batch} JAX done")
  if with_torch:
    out["torch"] = _or_error(torch_profile)
    gc.collect()
    log(f"  {step} b{batch} torch done")
  return out


def format_profile(entry: dict) -> str:
  """A side-by-side table of one batch's profiles, ms per step."""
  cols = [f for f in ("jax", "torch") if "ms_per_step_by_kind" in
          entry.get(f, {})]
  lines = [f"{entry['step']} step, batch {entry['batch']} (ms per step)",
           f"  {'':<22}" + "".join(f"{c:>10}" for c in cols)]

  def row(label, values):
    cells = "".join("         -" if v is None else f"{v:>10.2f}"
                    for v in values)
    lines.append(f"  {label:<22}{cells}")

  for kind in KINDS:
    row(kind, [entry[c]["ms_per_step_by_kind"][kind] for c in cols])
  for key, label in (("kernel_ms_per_step", "sum of kernels"),
                     ("busy_ms_per_step", "busy (union)"),
                     ("wall_ms_per_step_traced", "wall, traced"),
                     ("wall_ms_per_step", "wall, untraced"),
                     ("kernels_per_step", "kernels per step")):
    row(label, [entry[c].get(key) for c in cols])
  for c in ("jax", "torch"):
    if "error" in entry.get(c, {}):
      lines.append(f"  {c} FAILED: {entry[c]['error']}")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--size", choices=("auto", "full", "small", "tiny"),
                      default="auto", help="auto: full on GPU, small on CPU")
  parser.add_argument("--step", default="joint",
                      choices=("joint", "classification", "segmentation"))
  parser.add_argument("--batches", type=int, nargs="+", default=None,
                      help="default: the size's batches, largest first")
  parser.add_argument("--steps", type=int, default=5, help="steps traced")
  parser.add_argument("--no-torch", action="store_true")
  args = parser.parse_args(argv)
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  os.makedirs(args.out, exist_ok=True)

  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import benchmark  # pylint: disable=g-import-not-at-top
  size_name = args.size
  if size_name == "auto":
    size_name = "small" if jax.devices()[0].platform == "cpu" else "full"
  size = dict(benchmark.SIZES[size_name])
  config = benchmark.make_config(size, size["dtype"])
  with_torch = not args.no_torch
  if with_torch:
    ok, why = benchmark.torch_available()
    if not ok:
      print(f"torch reference skipped: {why}")
      with_torch = False
  batches = args.batches or sorted(size["batches"], reverse=True)
  result = {"what": __doc__.split("\n\n")[0].replace("\n", " "),
            "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(["python -m benchmarks.step_profile"]
                                + list(argv if argv is not None
                                       else sys.argv[1:])),
            "device": benchmark.device_info(), "size": size_name,
            "dtype": size["dtype"], "kinds": KINDS, "profiles": []}
  path = os.path.join(args.out, "step_profile.json")
  for batch in batches:
    save_dir = os.path.join(args.out, f"{args.step}_b{batch}")
    os.makedirs(save_dir, exist_ok=True)
    entry = profile_batch(config, size, args.step, batch, args.steps,
                          with_torch, save_dir)
    result["profiles"].append(entry)
    print(format_profile(entry), flush=True)
    with open(path, "w") as f:
      json.dump(result, f, indent=1)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
