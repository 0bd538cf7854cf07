"""Rewrites and XLA:CPU options tried on the CPU train step, each timed
against the step as built.

Usage: python -m benchmarks.cpu_step_variants --out FILE.json
           [--variants NAME ...] [--repeats 6] [--size small|tiny]

The step is the classification step (ResNet-50, batch 8, 224, float32),
compiled with ``cpu_compiler_options()``. It is built once. Each variant is
then built and timed interleaved with it, one step per block, so the two
share the machine's background load. The JSON holds both rates, their ratio
and, from the compiled HLO, the number of transpose fusions that recompute
their producers. Pin the process (``taskset -c 0``) for 1-core figures.

Variants (benchmarks/README.md):
  no_dropout            model.dropout_rate = 0
  hash_dropout          systems.dropout_rng = "hash": a keyed hash of each
                        element's index, recomputed where applied, instead
                        of jax.random's threefry masks (flax's nn.Dropout)
  dropout_8bit          threefry with systems.dropout_bits = 8: a quarter of
                        the random words
  dropout_16bit         threefry with systems.dropout_bits = 16: half of them
  rbg_prng              RBG instead of threefry bits (systems.prng_impl)
  conv_input_barrier    lax.optimization_barrier on every conv input
  materialised_conv_inputs
                        every non-stem conv input multiplied by exp(0 * x):
                        exact, and XLA will not copy exp into its consumers
  fusion_emitters_off   xla_cpu_use_fusion_emitters=false
  xnn_convolutions      xla_cpu_experimental_xnn_fusion_type=
                        LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION
  onednn_convolutions   xla_cpu_use_onednn + the same fusion type for oneDNN
  ynn_dots              YNNPACK for dots as well as reductions
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks import benchmark  # pylint: disable=g-import-not-at-top
from rapool_jax import xla_flags  # pylint: disable=g-import-not-at-top


# ----------------------------------------------------------------------------
# Variants.


_patched = benchmark._patched  # pylint: disable=protected-access


def _conv_with_input(transform):
  conv_call = nn.Conv.__call__

  def call(self, inputs):
    return conv_call(self, transform(inputs))
  return _patched(nn.Conv, "__call__", call)


def _materialise(x):
  # The stem reads the image, which has negative values: leave it alone.
  return x if x.shape[-1] == 3 else x * jnp.exp(x * 0.0)


_FUSION = "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"

# name -> (config overrides, runner kwargs, compile options, patch factory)
VARIANTS = {
    "no_dropout": ({"model.dropout_rate": 0.0}, {}, {}, None),
    "hash_dropout": ({"systems.dropout_rng": "hash"}, {}, {}, None),
    "dropout_8bit": ({"systems.dropout_bits": 8}, {}, {}, None),
    "dropout_16bit": ({"systems.dropout_bits": 16}, {}, {}, None),
    "rbg_prng": ({}, {"key_impl": "rbg"}, {}, None),
    "conv_input_barrier": ({}, {}, {}, lambda: _conv_with_input(
        lax.optimization_barrier)),
    "materialised_conv_inputs": ({}, {}, {}, lambda: _conv_with_input(
        _materialise)),
    "fusion_emitters_off": ({}, {}, {"xla_cpu_use_fusion_emitters": False},
                            None),
    "xnn_convolutions": ({}, {}, {
        "xla_cpu_experimental_xnn_fusion_type": _FUSION}, None),
    "onednn_convolutions": ({}, {}, {
        "xla_cpu_use_onednn": True,
        "xla_cpu_experimental_onednn_fusion_type": _FUSION}, None),
    "ynn_dots": ({}, {}, {
        "xla_cpu_experimental_ynn_fusion_type":
            "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
        None),
}


def recomputing_transposes(hlo_text: str) -> int:
  """Transpose fusions in the entry computation with more than one operand:
  they recompute their producers instead of reading one buffer."""
  entry = hlo_text[hlo_text.index("ENTRY"):]
  return sum(
      1 for m in re.finditer(r"%transpose\S* = \S+ fusion\(([^)]*)\)", entry)
      if len(m.group(1).split(",")) > 1)


def build(size_name: str, batch: int, name: str | None):
  """The classification-step runner, as built or as variant ``name``."""
  overrides, runner_kwargs, options, patch = (
      VARIANTS[name] if name else ({}, {}, {}, None))
  config = benchmark.make_config(benchmark.SIZES[size_name], "float32")
  for key, value in overrides.items():   # "block.key": value
    block, name = key.split(".")
    config[block][name] = value
  options = {**xla_flags.cpu_compiler_options("cpu"), **options}
  with patch() if patch else contextlib.nullcontext():
    return benchmark.JaxTrainRunner(config, "classification", batch,
                                    compiler_options=options, **runner_kwargs)


def compare(names, size_name: str = "small", batch: int = 8,
            repeats: int = 6, log=print) -> dict:
  """Each variant against the step as built, interleaved pairwise."""
  base = build(size_name, batch, None)
  base_transposes = recomputing_transposes(base.compiled.as_text())
  out = {}
  for name in names:
    try:
      variant = build(size_name, batch, name)
    except Exception as e:  # pylint: disable=broad-except
      out[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
      log(f"{name}: failed to build: {out[name]['error']}")
      continue
    trackers = [benchmark._PeakTracker(lambda: None) for _ in range(2)]  # pylint: disable=protected-access
    blocks = benchmark.time_interleaved([base, variant], 1, repeats, 1,
                                        trackers)
    as_built, changed = (benchmark._summary(b) for b in blocks)  # pylint: disable=protected-access
    out[name] = {
        "as_built_img_per_s": as_built["img_per_s"],
        "img_per_s": changed["img_per_s"],
        "ratio": changed["img_per_s"] / as_built["img_per_s"],
        "as_built_img_per_s_quiet": as_built["img_per_s_quiet"],
        "img_per_s_quiet": changed["img_per_s_quiet"],
        "compile_s": variant.compile_s,
        "recomputing_transposes": recomputing_transposes(
            variant.compiled.as_text()),
        "program_changed": (variant.compiled.as_text()
                            != base.compiled.as_text()),
        "as_built_recomputing_transposes": base_transposes,
    }
    log(f"{name}: {changed['img_per_s']:.2f} img/s against "
        f"{as_built['img_per_s']:.2f} as built (x{out[name]['ratio']:.3f}); "
        f"recomputing transposes {out[name]['recomputing_transposes']} "
        f"against {base_transposes}")
    del variant
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS),
                      metavar="NAME")
  parser.add_argument("--repeats", type=int, default=6)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", choices=("small", "tiny"), default="small")
  args = parser.parse_args(argv)
  unknown = sorted(set(args.variants) - set(VARIANTS))
  if unknown:
    parser.error(f"unknown variant(s) {unknown}; known: {sorted(VARIANTS)}")
  out_dir = os.path.dirname(os.path.abspath(args.out))
  if not os.path.isdir(out_dir):
    parser.error(f"--out: directory {out_dir} does not exist")
  t0 = time.perf_counter()
  result = {"what": __doc__.split("\n\n")[0].replace("\n", " "),
            "date": time.strftime("%Y-%m-%d"),
            "device": benchmark.device_info(),
            "cpus": len(os.sched_getaffinity(0)), "size": args.size,
            "batch": args.batch, "repeats": args.repeats,
            "variants": compare(args.variants, args.size, args.batch,
                                args.repeats)}
  result["wall_s"] = time.perf_counter() - t0
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
