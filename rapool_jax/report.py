"""What a person reads: progress lines, TensorBoard scalars, the results table,
ROC curves and CAM overlays (the paper's Fig. 2 and 5)."""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rapool_jax import metrics as metrics_lib  # noqa: E402
from rapool_jax import pooling as pooling_lib  # noqa: E402
from rapool_jax import provenance  # noqa: E402
from rapool_jax import sharding  # noqa: E402
from rapool_jax.data import pipeline  # noqa: E402

COLUMNS = ("sensitivity", "specificity", "accuracy", "auc", "jaccard")


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

  def scalars(self, prefix: str, step: int, values: dict):
    if jax.process_index() != 0:
      return
    if self._writer is None:
      from tensorboardX import SummaryWriter
      self._writer = SummaryWriter(self.logdir)
    for k, v in values.items():
      self._writer.add_scalar(f"{prefix}/{k}", float(v), step)
    self._writer.flush()


def format_row(row: dict) -> str:
  cells = " ".join(f"{c}={row[c]:.3f}" for c in COLUMNS if c in row)
  return f"{row['model']}: {cells}"


def results_markdown(results: dict) -> str:
  rows = results["rows"]
  cols = [c for c in COLUMNS if any(c in r for r in rows)]
  names = {"auc": "AUC", "jaccard": "Jaccard (JA)"}
  head = "| model | " + " | ".join(names.get(c, c.capitalize()) for c in cols) + " |"
  lines = [f"Evaluation on `{results['data']}` split `{results['eval_split']}` "
           f"({results['num_eval_examples']} images)", "", head,
           "|" + "---|" * (len(cols) + 1)]
  for r in rows:
    cells = [f"{r[c]:.3f}" if c in r else "-" for c in cols]
    lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot_roc(path: str, rows_scores: list[tuple[str, np.ndarray, np.ndarray]]):
  fig, ax = plt.subplots(figsize=(5, 5))
  for name, labels, scores in rows_scores:
    fpr, tpr, _ = metrics_lib.roc_curve(labels, scores)
    auc = metrics_lib.classification_metrics(labels, scores, 0.5)["auc"]
    ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
  ax.plot([0, 1], [0, 1], "k:", lw=0.8)
  ax.set_xlabel("1 - specificity")
  ax.set_ylabel("sensitivity")
  ax.set_title("ROC, melanoma vs rest")
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def class_activation_maps(model, variables, images, pooling: str, cls: int,
                          masks=None):
  """CAM of class ``cls``: ``sum_i w_i f_i``, times the pooling's weights (S
  for region pooling, the ground truth ``masks [B, H, W]`` for
  ``mask_oracle``). Returns the CAM and S, each ``[B, h, w]``."""
  out = model.apply(variables, images, train=False, pooling=pooling,
                    mask=masks)
  w = variables["params"]["classifier"]["kernel"][:, cls]
  cam = jnp.einsum("bhwc,c->bhw", out["features"].astype(jnp.float32), w)
  if pooling.startswith("region"):
    cam = cam * out["score_map"]
  elif pooling == "mask_oracle":
    cam = cam * pooling_lib.resize_mask_to_features(masks, cam.shape[1:3])
  return np.asarray(cam), np.asarray(out["score_map"])


def plot_cams(path: str, trainer, stage_variables, split: pipeline.Split):
  """Grid: image + GT contour | CAM (GAP model) | CAM (region model) | score map S."""
  config = trainer.config
  k = config.report.num_cam_images
  order = np.argsort(-split.labels, kind="stable")  # melanomas first
  pick = np.concatenate([order[:(k + 1) // 2], order[::-1][:k // 2]])[:k]
  images, masks = pipeline.center_crop(split.images[pick], split.masks[pick],
                                       config.data.crop_size)
  x = pipeline.normalize(jnp.asarray(images), trainer.mean, trainer.std)
  # Host copies: only process 0 draws, so no collective may run here.
  stage_variables = jax.tree.map(sharding.to_host, stage_variables)
  columns = []
  for name in config.stage_order:
    stage = config.stages[name]
    if stage.report_as:
      cam, score = class_activation_maps(trainer.model, stage_variables[name], x,
                                         stage.pooling, 1, jnp.asarray(masks))
      columns.append((f"CAM: {stage.report_as}", cam))
  columns.append(("score map S (last stage)", score))
  fig, axes = plt.subplots(len(pick), len(columns) + 1,
                           figsize=(2.2 * (len(columns) + 1), 2.2 * len(pick)),
                           squeeze=False)
  size = images.shape[1]
  for r, i in enumerate(pick):
    ax = axes[r, 0]
    ax.imshow(images[r])
    if split.has_mask[i]:
      ax.contour(masks[r], levels=[0.5], colors="lime", linewidths=0.8)
    ax.set_title(f"{split.ids[i]}\n{'melanoma' if split.labels[i] == 1 else 'other'}",
                 fontsize=7)
    for c, (title, maps) in enumerate(columns, start=1):
      ax = axes[r, c]
      ax.imshow(images[r])
      ax.imshow(maps[r], cmap="jet", alpha=0.5, extent=(0, size, size, 0),
                interpolation="bilinear")
      if r == 0:
        ax.set_title(title, fontsize=7)
  for ax in axes.ravel():
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(workdir: str, config, results: dict, trainer, stage_variables,
                 split: pipeline.Split):
  """Writes results.json, results.md, figures/roc.png and figures/cam.png."""
  if jax.process_index() != 0:
    return
  rows = results["rows"]
  scores = [(r["model"], r.pop("_labels"), r.pop("_scores")) for r in rows
            if "_scores" in r]
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(provenance.results_header(config) + "\n" + results_markdown(results))
  figures = os.path.join(workdir, "figures")
  os.makedirs(figures, exist_ok=True)
  if scores:
    plot_roc(os.path.join(figures, "roc.png"), scores)
  if config.report.num_cam_images > 0:  # 0: no CAM figure
    plot_cams(os.path.join(figures, "cam.png"), trainer, stage_variables,
              split)
