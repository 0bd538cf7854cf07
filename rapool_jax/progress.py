"""What a running job prints and logs: progress lines (step, losses, img/s,
ETA) and TensorBoard scalars (tensorboardX; no TensorFlow needed)."""

from __future__ import annotations

import os
import time

import jax
from tensorboardX import SummaryWriter


class Progress:
  """Prints ``[stage] step/total loss ... img/s ETA`` lines.

  The clock restarts once the first step has run (``compiled``), so img/s
  and ETA measure training, not XLA compilation; the next line says how
  long the first step took.
  """

  def __init__(self, name: str, total: int, batch_size: int):
    self.name, self.total, self.batch_size = name, total, batch_size

  def start(self, step: int):
    self.t0, self.step0 = time.time(), step
    self._first_step_note = None

  def compiled(self, step: int):
    """Call once, when step ``step``, the first, has run (compile included)."""
    self._first_step_note = (f" (first step {time.time() - self.t0:.1f}s, "
                             "compilation included)")
    self.t0, self.step0 = time.time(), step

  def log(self, step: int, scalars: dict):
    elapsed = time.time() - self.t0
    done = step - self.step0
    values = " ".join(f"{k}={float(v):.4f}" for k, v in scalars.items())
    if done > 0:
      speed = (f"{done * self.batch_size / max(elapsed, 1e-9):.1f} img/s "
               f"ETA {(self.total - step) * elapsed / done:.0f}s")
    else:
      speed = "img/s n/a (first step only)"
    if self._first_step_note:
      speed, self._first_step_note = speed + self._first_step_note, None
    print(f"[{self.name}] step {step}/{self.total} {values} {speed}",
          flush=True)


class MetricWriter:
  """TensorBoard event files (tensorboardX; no TensorFlow needed)."""

  def __init__(self, logdir: str):
    self.logdir = logdir
    self._writer = None
    self._files = 0

  def scalars(self, prefix: str, step: int, values: dict):
    if jax.process_index() != 0:
      return
    if self._writer is None:
      # File names carry seconds only: a file reopened within the same
      # second would be overwritten without the suffix.
      self._files += 1
      self._writer = SummaryWriter(
          self.logdir, filename_suffix=f".{os.getpid()}.{self._files}")
    for k, v in values.items():
      self._writer.add_scalar(f"{prefix}/{k}", float(v), step)
    self._writer.flush()

  def close(self):
    """Writes the queued events: tensorboardX's ``flush`` leaves them to a
    daemon thread, which loses them when the process ends first. The next
    ``scalars`` opens a new file."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None
