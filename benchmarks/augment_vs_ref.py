"""On-device augmentation now against the pipeline of an earlier commit.

    python -m benchmarks.augment_vs_ref --ref 53e5d1c~1 --out FILE.json

Loads ``rapool_jax/data/pipeline.py`` as it was at ``--ref`` (``git show``)
next to the current one and times both in this process, interleaved: the
jitted augmentation + normalisation of a batch drawn from a uint8 split on
the device (256 px -> 224, rotation up to 180 degrees, flips), as
``train.augmented_inputs`` runs it. Reports img/s per implementation and the
largest difference between their outputs for the same key.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, ROOT)
from benchmarks import benchmark  # pylint: disable=g-import-not-at-top
from rapool_jax.data import pipeline  # pylint: disable=g-import-not-at-top


def load_pipeline_at(ref: str):
  """The ``pipeline`` module as committed at ``ref``."""
  source = subprocess.run(
      ["git", "show", f"{ref}:rapool_jax/data/pipeline.py"], cwd=ROOT,
      check=True, capture_output=True, text=True).stdout
  with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
    f.write(source)
  spec = importlib.util.spec_from_file_location("pipeline_at_ref", f.name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  os.unlink(f.name)
  return module


def augment_fn(module, images, masks, crop: int):
  """jitted ``(key, rows) -> normalised images, masks`` with ``module``."""
  takes_rows = "rows" in inspect.signature(module.augment_batch).parameters

  @jax.jit
  def fn(key, rows):
    if takes_rows:   # gathers from the split itself
      x, m = module.augment_batch(key, images, masks, crop, 180.0, True,
                                  rows=rows)
    else:
      x, m = module.augment_batch(key, images[rows], masks[rows], crop,
                                  180.0, True)
    return pipeline.normalize(x, (0.5,) * 3, (0.25,) * 3), m
  return fn


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--ref", required=True, help="git commit to compare with")
  parser.add_argument("--out", required=True)
  parser.add_argument("--batches", type=int, nargs="+", default=[8, 64])
  parser.add_argument("--split", type=int, default=64, help="examples held")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args(argv)

  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (args.split, 256, 256, 3),
                                    np.uint8))
  masks = jnp.asarray(rng.integers(0, 2, (args.split, 256, 256), np.uint8))
  fns = {"ref": augment_fn(load_pipeline_at(args.ref), images, masks, 224),
         "now": augment_fn(pipeline, images, masks, 224)}
  result = {"what": __doc__.split("\n\n")[0], "ref": args.ref,
            "device": benchmark.device_info(), "split": args.split,
            "rows": []}
  key = jax.random.key(0)
  for batch in args.batches:
    rows = jnp.arange(batch, dtype=jnp.int32) % args.split
    outs = {name: fn(key, rows) for name, fn in fns.items()}
    rates = {name: [] for name in fns}
    for _ in range(args.repeats):
      for name, fn in fns.items():
        t0 = time.perf_counter()
        for s in range(args.steps):
          out = fn(jax.random.fold_in(key, s), rows)
        jax.block_until_ready(out)
        rates[name].append(args.steps * batch / (time.perf_counter() - t0))
    row = {"batch": batch,
           **{f"{name}_img_per_s": float(np.median(r))
              for name, r in rates.items()},
           # Normalised units (std 0.25 of [0, 1]): 0.02 is 1.3 grey levels.
           "max_abs_image_diff": float(jnp.abs(outs["ref"][0]
                                               - outs["now"][0]).max()),
           "mask_mismatch_frac": float((outs["ref"][1]
                                        != outs["now"][1]).mean())}
    row["speedup"] = row["now_img_per_s"] / row["ref_img_per_s"]
    result["rows"].append(row)
    print(json.dumps(row), flush=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
