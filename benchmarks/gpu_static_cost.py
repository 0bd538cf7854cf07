"""What XLA:GPU makes of the joint step, compiled without a GPU.

    python -m venv --system-site-packages /tmp/gpuvenv
    /tmp/gpuvenv/bin/pip install "jax[cuda12]==$(python -c 'import jax; print(jax.__version__)')"
    /tmp/gpuvenv/bin/python -m benchmarks.gpu_static_cost --out benchmarks/results/h200_static_cost.json

XLA can compile for a GPU it is told about instead of one it finds
(``jax.experimental.topologies`` with a target config): the CUDA plugin and
the CUDA and cuDNN wheels that ``jax[cuda12]`` installs are enough, with no
device or driver. This script compiles the project's joint step
(``benchmark.train_step_program``, ResNet-50 at 224, bf16, batch 256) for an
H200 or H100 target, once per variant of ``benchmark.JOINT_VARIANTS``, and
reads the optimised HLO (``XLA_FLAGS=--xla_dump_to=DIR`` also keeps each
kernel's PTX). Nothing runs, so nothing here is a timing. Per kind of work
(``step_profile.hlo_op_kinds``) it sums, over the kernels of the entry
computation:

- ``GB``: bytes each kernel reads (its operands) and writes (its outputs).
  A memory-bound kernel's time is about this over the memory bandwidth.
- ``G_element_ops``: the non-trivial HLO ops of each fused computation times
  the elements of the kernel's largest output. This approximates the ALU work
  of kernels that compute a lot per element, such as threefry's 20 rounds for
  every dropout decision.

Autotuning needs a device, so convolution algorithms are XLA's defaults. The
fusion and layout decisions are the ones a device would also make, except
for choices that autotuning informs. The XLA version is this machine's jaxlib,
which may differ from the GPU machine's.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import step_profile  # noqa: E402  pylint: disable=g-import-not-at-top

# Target descriptions (XLA's GpuTargetConfigProto, text format). Both cards
# are sm_90 with 132 SMs; they differ in memory size and bandwidth.
_TARGET = """
gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth}
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: {memory}
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 12 minor: 9 }}
device_description_str: "{name}"
"""
TARGETS = {
    "h200": dict(name="NVIDIA H200", bandwidth=4_800_000_000_000,
                 memory=150_754_820_096),
    "h100": dict(name="NVIDIA H100 80GB HBM3", bandwidth=3_352_320_000_000,
                 memory=84_929_347_584),
}

_SHAPE = re.compile(r"\b(pred|[su]8|[su]16|bf16|f16|[su]32|f32|[su]64|f64)"
                    r"\[([\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2,
          "f16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
          "f64": 8}
# Instructions that launch nothing, and ops that cost no ALU work.
_NOT_KERNELS = {"parameter", "constant", "tuple", "get-tuple-element",
                "bitcast", ""}
_FREE_OPS = _NOT_KERNELS | {"broadcast", "reshape", "iota"}


def _arrays(type_text: str) -> list[tuple[str, int]]:
  """(dtype, elements) of every array in an HLO type (tuples included)."""
  return [(dtype, math.prod(int(d) for d in dims.split(",") if d))
          for dtype, dims in _SHAPE.findall(type_text)]


def _nbytes(type_text: str) -> int:
  return sum(_BYTES[dtype] * n for dtype, n in _arrays(type_text))


def _operands(rest: str, opcode: str) -> list[str]:
  """Names of the operands in ``opcode(%a, %b), attrs...``."""
  args = rest[rest.index(opcode + "(") + len(opcode) + 1:]
  depth = 1
  for i, ch in enumerate(args):
    depth += (ch == "(") - (ch == ")")
    if depth == 0:
      return re.findall(r"%([\w.\-]+)", args[:i])
  return []


def kernel_costs(hlo_text: str) -> list[dict]:
  """One row per kernel of the entry computation: name, kind, bytes read and
  written, element ops (see the module docstring)."""
  kinds = step_profile.hlo_op_kinds(hlo_text)
  computations, _ = step_profile._parse_hlo(hlo_text)  # pylint: disable=protected-access
  ops_per_element = {
      name: sum(op not in _FREE_OPS for _, op, _, _ in instructions)
      for name, instructions in computations.items()}
  lines = hlo_text.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith("ENTRY"))
  sizes = {}
  signature = lines[start].split(") ->")[0]
  for name, type_text in re.findall(r"([\w.\-]+): ([a-z]+\d*\[[\d,]*\])",
                                    signature):
    sizes[name] = _nbytes(type_text)
  rows = []
  for line in lines[start + 1:]:
    if line.startswith("}"):
      break
    m = step_profile._INSTRUCTION.match(line)  # pylint: disable=protected-access
    if not m:
      continue
    name, rest = m.groups()
    opcode = step_profile._OPCODE.search(rest)  # pylint: disable=protected-access
    opcode = opcode.group(1) if opcode else ""
    type_text = rest[:rest.index(opcode + "(")] if opcode else rest
    sizes[name] = _nbytes(type_text)
    if opcode in _NOT_KERNELS or kinds.get(name) is None:
      continue
    calls = step_profile._CALLS.findall(rest)  # pylint: disable=protected-access
    per_element = sum(ops_per_element.get(c, 0) for c in calls) or 1
    elements = max((n for _, n in _arrays(type_text)), default=0)
    rows.append({"name": name, "kind": kinds[name],
                 "read_bytes": sum(sizes.get(o, 0)
                                   for o in _operands(rest, opcode)),
                 "written_bytes": sizes[name],
                 "element_ops": per_element * elements})
  return rows


def summarise_costs(rows: list[dict]) -> dict:
  """Kernels, GB moved and G element ops, per kind and in total."""
  by_kind = collections.defaultdict(collections.Counter)
  for r in rows:
    for key in (r["kind"], "total"):
      by_kind[key]["kernels"] += 1
      by_kind[key]["GB"] += (r["read_bytes"] + r["written_bytes"]) / 1e9
      by_kind[key]["G_element_ops"] += r["element_ops"] / 1e9
  return {kind: {k: round(v, 3) for k, v in c.items()}
          for kind, c in sorted(by_kind.items())}


def compile_joint_step(variant: str, batch: int, target: str):
  """Optimised HLO text and XLA memory of one variant, compiled for ``target``."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  from benchmarks import benchmark  # pylint: disable=g-import-not-at-top

  topology = topologies.get_topology_desc(
      platform="cuda", topology="1x1x1",
      target_config=_TARGET.format(**TARGETS[target]))
  mesh = topologies.make_mesh(topology, (1,), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(
        a.shape, a.dtype, sharding=replicated), tree)

  config = benchmark.make_config(benchmark.SIZES["full"], "bfloat16")
  with benchmark.joint_variant(config, variant) as variant_config:
    step, state, idxs, key, split = benchmark.train_step_program(
        variant_config, "joint", batch)
    lowered = benchmark.lower_train_step(
        variant_config, step, state,
        (abstract(idxs[0]), abstract(key), abstract(split)), replicated)
  compiled = lowered.compile()
  memory = compiled.memory_analysis()
  return compiled.as_text(), getattr(memory, "temp_size_in_bytes", None)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--target", choices=sorted(TARGETS), default="h200")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--variants", nargs="+", default=None,
                      help="default: every benchmark.JOINT_VARIANTS entry")
  parser.add_argument("--hlo-dir", default="",
                      help="also save each variant's optimised HLO here")
  args = parser.parse_args(argv)
  from benchmarks import benchmark  # pylint: disable=g-import-not-at-top
  args.variants = args.variants or list(benchmark.JOINT_VARIANTS)
  unknown = [v for v in args.variants if v not in benchmark.JOINT_VARIANTS]
  if unknown:
    parser.error(f"unknown variants {unknown}; choose from "
                 f"{list(benchmark.JOINT_VARIANTS)}")
  try:
    import jax  # pylint: disable=g-import-not-at-top
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    topologies.get_topology_desc(
        platform="cuda", topology="1x1x1",
        target_config=_TARGET.format(**TARGETS[args.target]))
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(f"gpu_static_cost: cannot compile for CUDA here ({e}); install "
             f"the plugin that matches jax {jax.__version__}: "
             f"pip install 'jax[cuda12]=={jax.__version__}'")
  result = {"target": TARGETS[args.target]["name"], "batch": args.batch,
            "jax": jax.__version__, "what": "static: nothing ran; see the "
            "docstring of benchmarks/gpu_static_cost.py", "variants": {}}
  for variant in args.variants:
    t0 = time.time()
    hlo, temp_bytes = compile_joint_step(variant, args.batch, args.target)
    if args.hlo_dir:
      os.makedirs(args.hlo_dir, exist_ok=True)
      with open(os.path.join(args.hlo_dir, f"{variant}.hlo"), "w") as f:
        f.write(hlo)
    summary = summarise_costs(kernel_costs(hlo))
    result["variants"][variant] = {"xla_temp_bytes": temp_bytes,
                                   "compile_s": round(time.time() - t0, 1),
                                   "by_kind": summary}
    total = summary["total"]
    print(f"{variant}: {total['kernels']} kernels, {total['GB']:.1f} GB, "
          f"{total['G_element_ops']:.1f} G element ops; random bits "
          f"{summary.get('random bits', {}).get('G_element_ops', 0):.1f} G "
          f"ops; max pool + gather/scatter "
          f"{summary.get('max pool', {}).get('GB', 0) + summary.get('gather/scatter', {}).get('GB', 0):.2f} GB",
          flush=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  # Before jax starts: the CUDA plugin must not look for a device (the
  # target is described), and the arrays built on the way live on the CPU.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
  main()
