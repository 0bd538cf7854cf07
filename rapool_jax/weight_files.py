"""Weight files: one reader per format, and their tensors into Flax variables.

``read(path)`` gives a file's tensors by its own key names; each backbone's
``load`` names the file's module for each of its own, and ``fill`` copies the
tensors over from PyTorch's layouts (conv ``OIHW`` -> ``HWIO``) or raises a
:class:`MismatchError` that lists every tensor that does not fit.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Any, Callable, Mapping

from flax import traverse_util
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  Registers numpy's "bfloat16" for BF16 files.
import numpy as np
import safetensors
import safetensors.numpy

from rapool_jax import errors

# Flax leaf name -> the torch module's parameter or buffer name.
TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias",
              "mean": "running_mean", "var": "running_var"}
# Longest list of names per category in an error; the counts stay exact.
_MAX_LISTED = 40


class MismatchError(errors.UserError):
  """A weights file does not fit the model (missing/extra/misshaped tensors)."""


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):  # e.g. sys.modules[module] is None
    return False


def check_readable(path: str, key: str = "config.model.pretrained") -> None:
  """Raises ValueError (one line) unless ``path`` is a weights file of a
  format read here, with its reader installed. ``key`` names the setting."""
  if not os.path.isfile(path):
    raise errors.UserError(f"{key}={path!r}: no such file")
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in READERS:
    raise errors.UserError(f"{key}={path!r}: unsupported file type {suffix!r}; "
                           f"expected one of {tuple(READERS)}")
  if suffix != ".safetensors" and not _installed("torch"):
    raise errors.UserError(
        f"{path}: reading {suffix} weights needs PyTorch, which "
        "is not installed: pip install torch (CPU wheels: pip "
        "install torch --index-url "
        "https://download.pytorch.org/whl/cpu)")


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The file's tensors by their own key names (``module.`` prefix removed)."""
  path = os.fspath(path)
  check_readable(path)
  state = READERS[os.path.splitext(path)[1].lower()](path)
  # nn.DataParallel / DistributedDataParallel checkpoints prefix every key.
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return state


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """A ``.safetensors`` file (any dtype, BF16 included; no torch needed)."""
  try:
    return dict(safetensors.numpy.load_file(path))
  except (safetensors.SafetensorError, TypeError) as e:
    raise errors.UserError(f"{path}: not a readable .safetensors file "
                           f"({' '.join(str(e).split())})") from e


def read_torch(path: str) -> dict[str, np.ndarray]:
  """A ``torch.save``d state dict (``.pth``/``.pt``, Hugging Face ``.bin``),
  also inside a training checkpoint (``{"state_dict": ...}``)."""
  import torch  # pylint: disable=g-import-not-at-top  (optional dependency)
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch's own message spans many lines.
    raise errors.UserError(
        f"{path}: not a readable PyTorch state dict (a torch.save of tensors, "
        f"read with torch.load(weights_only=True)): {type(e).__name__}") from e
  while isinstance(obj, dict) and not all(
      isinstance(v, torch.Tensor) for v in obj.values()):
    obj = next((obj[k] for k in ("state_dict", "model", "module")
                if isinstance(obj.get(k), dict)), None)
  if not isinstance(obj, dict):
    raise errors.UserError(
        f"{path}: holds no PyTorch state dict (a dict of tensors, "
        "or one under 'state_dict', 'model' or 'module')")
  return {k: (v.float() if v.dtype == torch.bfloat16 else v).detach().numpy()
          for k, v in obj.items()}


READERS = {".safetensors": read_safetensors, ".pth": read_torch,
           ".pt": read_torch, ".bin": read_torch}


def fill(variables: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
         module_key: Callable[[tuple[str, ...]], str], *, path: str,
         what: str, ignore: str, hint: Callable[[], str | None] = lambda: None
         ) -> dict[str, Any]:
  """``variables`` (``{"params", "batch_stats"}`` trees of arrays or shapes)
  filled from ``tensors``, in the same structure and dtypes.

  ``module_key(modules)`` gives the file's module name of a Flax module path;
  file keys matching the regex ``ignore`` (a classifier, counters) may stay
  unused. Anything else that does not fit raises :class:`MismatchError`.
  """
  out, used, missing, wrong = {}, set(), [], []
  for (collection, *modules, leaf), target in traverse_util.flatten_dict(
      dict(variables)).items():
    key = f"{module_key(tuple(modules))}.{TORCH_LEAF[leaf]}"
    shape = tuple(target.shape)
    if len(shape) == 4:  # Conv kernels: the file's OIHW from Flax's HWIO.
      shape = (shape[3], shape[2], shape[0], shape[1])
    if key not in tensors:
      missing.append(f"{key} {list(shape)}")
      continue
    used.add(key)
    value = tensors[key]
    if tuple(value.shape) != shape:
      wrong.append(f"{key} file {list(value.shape)} vs model {list(shape)}")
      continue
    value = np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value
    out[(collection, *modules, leaf)] = jnp.asarray(value, target.dtype)
  unexpected = [f"{k} {list(v.shape)}" for k, v in sorted(tensors.items())
                if k not in used and not re.search(ignore, k)]
  found = {"missing": sorted(missing), "unexpected": unexpected,
           "wrong shape": wrong}
  if any(found.values()):
    counts = ", ".join(f"{len(v)} {k}" for k, v in found.items() if v)
    # The likely cause first: the lists can be long.
    lines = [f"{path} does not fit {what}: {counts}"
             + "".join(f"; hint: {h}" for h in [hint()] if h)]
    for name, items in found.items():
      if items:
        more = (f", ... (+{len(items) - _MAX_LISTED} more)"
                if len(items) > _MAX_LISTED else "")
        lines.append(f"  {name}: {', '.join(items[:_MAX_LISTED])}{more}")
    raise MismatchError("\n".join(lines))
  return traverse_util.unflatten_dict(out)
