"""What a person reads at the end of a run: the results table, ROC curves and
CAM overlays (the paper's Fig. 2 and 5). Progress lines: ``progress.py``."""

from __future__ import annotations

import json
import os
from typing import Any

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
    auc = metrics_lib.roc_auc(labels, scores)
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
  cam = cam_of_outputs(out, variables, pooling, cls, masks)
  return np.asarray(cam), np.asarray(out["score_map"])


def cam_of_outputs(out: dict, variables, pooling: str, cls: int, masks=None):
  """``[B, h, w]`` CAM of class ``cls`` from a forward pass's ``out``: the
  classifier's weights on the last features, weighted as the pooling weighs
  them (jit-able)."""
  w = variables["params"]["classifier"]["kernel"][:, cls]
  cam = jnp.einsum("bhwc,c->bhw", out["features"].astype(jnp.float32), w)
  if pooling.startswith("region"):
    return cam * out["score_map"]
  if pooling == "mask_oracle":
    return cam * pooling_lib.resize_mask_to_features(masks, cam.shape[1:3])
  return cam


def plot_cams(path: str, model, columns: list[tuple[str, Any, str]],
              split: pipeline.Split, data, num_images: int):
  """Grid: image + GT contour | a CAM per ``columns`` entry ``(title,
  variables, pooling)`` | the last one's score map S. ``data``: the data
  config (crop size, input normalisation)."""
  order = np.argsort(-split.labels, kind="stable")  # melanomas first
  k = num_images
  pick = np.concatenate([order[:(k + 1) // 2], order[::-1][:k // 2]])[:k]
  images = pipeline.center_crop(split.images[pick], data.crop_size)
  masks = pipeline.center_crop(split.masks[pick], data.crop_size)
  x = pipeline.normalize(jnp.asarray(images), tuple(data.mean), tuple(data.std))
  maps = []
  for title, variables, pooling in columns:
    # Host copies: only process 0 draws, so no collective may run here.
    cam, score = class_activation_maps(
        model, jax.tree.map(sharding.to_host, variables), x, pooling, 1,
        jnp.asarray(masks))
    maps.append((f"CAM: {title}", cam))
  maps.append(("score map S (last stage)", score))
  fig, axes = plt.subplots(len(pick), len(maps) + 1,
                           figsize=(2.2 * (len(maps) + 1), 2.2 * len(pick)),
                           squeeze=False)
  for r, i in enumerate(pick):
    _draw_image(axes[r, 0], images[r], masks[r] if split.has_mask[i] else None,
                f"{split.ids[i]}\n"
                f"{'melanoma' if split.labels[i] == 1 else 'other'}")
    for c, (title, overlay) in enumerate(maps, start=1):
      _draw_image(axes[r, c], images[r], None, title if r == 0 else "",
                  overlay[r])
  for ax in axes.ravel():
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _draw_image(ax, image, mask, title: str, overlay=None) -> None:
  ax.imshow(image)
  if mask is not None:
    ax.contour(mask, levels=[0.5], colors="lime", linewidths=0.8)
  if overlay is not None:
    size = image.shape[0]
    ax.imshow(overlay, cmap="jet", alpha=0.5, extent=(0, size, size, 0),
              interpolation="bilinear")
  if title:
    ax.set_title(title, fontsize=7)


def write_report(workdir: str, config, results: dict, model,
                 cam_columns: list[tuple[str, Any, str]],
                 split: pipeline.Split):
  """Writes results.json, results.md, figures/roc.png and figures/cam.png
  (``cam_columns``: ``plot_cams``'s)."""
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
    plot_cams(os.path.join(figures, "cam.png"), model, cam_columns, split,
              config.data, config.report.num_cam_images)
