"""Evaluation: the model over whole splits, results rows, per-image
predictions and the linear heads.

Every reported model becomes a row of metrics on the evaluation split, and a
CSV of per-image outputs (``WORKDIR/predictions/<split>/<row>.csv``: image,
label, score, Jaccard) on the evaluation split and on the validation split, so
that paired tests, other thresholds and pooled cross-validation tables can be
recomputed from files. The linear heads (RankOpt, Eq. 4-8, and a
class-balanced logistic regression to compare it with) are fitted on the
pooled training features of one stage.
"""

from __future__ import annotations

import csv
import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from rapool_jax import linear_baselines
from rapool_jax import metrics as metrics_lib
from rapool_jax import rankopt
from rapool_jax import sharding
from rapool_jax.data import pipeline

POSITIVE = 1  # melanoma is class 1 in both tasks
PLATEAU_METRICS = ("val_loss", "val_auc", "val_jaccard")


def eval_step(variables, images, masks, *, model, pooling, mean, std):
  """Inference on centre-cropped uint8 ``images [B, H, W, 3]`` (and
  ``masks [B, H, W]``, read by mask-oracle pooling): ``probs [B, K]``,
  ``pooled [B, C]``, ``seg_pred [B, h, w]`` and ``score_map [B, h, w]``."""
  out = model.apply(variables, pipeline.normalize(images, mean, std),
                    train=False, pooling=pooling, mask=masks)
  return {"probs": jax.nn.softmax(out["logits"], -1),
          "pooled": out["pooled"],
          "seg_pred": jnp.argmax(out["seg_logits"], -1).astype(jnp.uint8),
          "score_map": out["score_map"]}


class Predictor:
  """``predictor(variables, split, pooling)``: ``eval_step`` over a whole
  split, centre-cropped, in batches of ``batch_size`` sharded over ``mesh``;
  host arrays with the split's length ``N`` in front."""

  def __init__(self, model, mesh, mean, std, batch_size: int, crop_size: int):
    self.model, self.mesh, self.mean, self.std = model, mesh, mean, std
    self.batch_size, self.crop_size = batch_size, crop_size
    self._steps = {}  # one jitted step per pooling

  def _step(self, pooling: str):
    if pooling not in self._steps:
      self._steps[pooling] = jax.jit(
          functools.partial(eval_step, model=self.model, pooling=pooling,
                            mean=self.mean, std=self.std),
          out_shardings=sharding.replicated(self.mesh))
    return self._steps[pooling]

  def __call__(self, variables, split: pipeline.Split, pooling: str) -> dict:
    step, bs, outs = self._step(pooling), self.batch_size, []
    for lo in range(0, len(split), bs):
      images, masks = split.images[lo:lo + bs], split.masks[lo:lo + bs]
      n = len(images)
      if n < bs:  # padded to a fixed shape: one compilation per pooling
        images = np.concatenate([images, np.zeros((bs - n,) + images.shape[1:],
                                                  images.dtype)])
        masks = np.concatenate([masks, np.zeros((bs - n,) + masks.shape[1:],
                                                masks.dtype)])
      images, masks = pipeline.center_crop(images, masks, self.crop_size)
      out = step(variables, sharding.put_global_batch(images, self.mesh),
                 sharding.put_global_batch(masks, self.mesh))
      outs.append({k: sharding.to_host(v)[:n] for k, v in out.items()})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def row_slug(name: str) -> str:
  """A row's file and column name: ``"Step 4: region pooling"`` -> ``step_4_region_pooling``."""
  return re.sub(r"[^a-z0-9.]+", "_", name.lower()).strip("_")


def gt_masks(split: pipeline.Split, crop_size: int) -> np.ndarray:
  """Ground-truth masks ``[N, crop, crop]`` under the evaluation view."""
  return pipeline.center_crop_masks(split.masks, crop_size)


def write_predictions(path: str, split: pipeline.Split, scores,
                      jaccards=None) -> None:
  """CSV of ``image,label,score[,jaccard]``; label 1 = melanoma."""
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  labels = (split.labels == POSITIVE).astype(int)
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image", "label", "score"] + (["jaccard"] if jaccards is not None
                                               else []))
    for i, image in enumerate(split.ids):
      cells = [image, labels[i], repr(float(scores[i]))]
      if jaccards is not None:
        cells.append("" if np.isnan(jaccards[i]) else f"{jaccards[i]:.6f}")
      w.writerow(cells)


def per_image_jaccard(out: dict, split: pipeline.Split, crop_size: int):
  """``[N]`` Jaccard of the predicted mask, NaN where the image has no mask."""
  ja = np.full(len(split), np.nan)
  if split.has_mask.any():
    ja[split.has_mask] = metrics_lib.jaccard_per_image(
        out["seg_pred"][split.has_mask],
        gt_masks(split, crop_size)[split.has_mask])
  return ja


def validation_metric(out: dict, split: pipeline.Split, metric: str,
                      crop_size: int) -> float:
  """``metric`` (one of ``PLATEAU_METRICS``) of ``Predictor`` outputs on
  ``split``, signed so that higher is better (``val_loss`` is negated)."""
  if metric == "val_loss":
    p_true = out["probs"][np.arange(len(split)), split.labels]
    return -float(np.mean(-np.log(np.maximum(p_true, 1e-12))))
  if metric == "val_auc":
    return metrics_lib.classification_metrics(
        split.labels, out["probs"][:, POSITIVE], 0.5)["auc"]
  if metric == "val_jaccard":
    return float(np.nanmean(per_image_jaccard(out, split, crop_size)))
  raise ValueError(f"plateau metric {metric!r}: choose one of "
                   f"{PLATEAU_METRICS}")


def metrics_row(name: str, split: pipeline.Split, scores, threshold: float,
                jaccards) -> dict:
  """A results row; ``_labels`` / ``_scores`` travel to the ROC plot only."""
  labels = (split.labels == POSITIVE).astype(np.int32)
  row = {"model": name,
         **metrics_lib.classification_metrics(labels, scores, threshold),
         "threshold": float(threshold),
         "_labels": labels, "_scores": np.asarray(scores)}
  if not np.all(np.isnan(jaccards)):
    row["jaccard"] = float(np.nanmean(jaccards))
  return row


def evaluate_model(trainer, name: str, variables, pooling: str) -> dict:
  """Row of a trained network on the evaluation split (softmax, threshold
  0.5); writes its per-image predictions on the evaluation and validation
  splits."""
  config = trainer.config
  row = None
  for split_name in _prediction_splits(config):
    split = trainer.splits[split_name]
    out = trainer.predict(variables, split, pooling)
    scores = out["probs"][:, POSITIVE]
    ja = per_image_jaccard(out, split, config.data.crop_size)
    write_predictions(_predictions_path(trainer.workdir, split_name, name),
                      split, scores, ja)
    if split_name == config.data.eval_split:
      row = metrics_row(name, split, scores, 0.5, ja)
  return row


def fit_linear_heads(trainer, stage_variables) -> list[dict]:
  """RankOpt (and, with ``rankopt.logistic_regression``, a class-balanced L2
  logistic regression) on the pooled training features of
  ``rankopt.after_stage``; a row per head, thresholds from the validation split
  (``rankopt.threshold_split``), never from the evaluation split."""
  config = trainer.config
  stage_name = config.rankopt.after_stage
  pooling = config.stages[stage_name].pooling
  variables = stage_variables[stage_name]
  feats = {}
  for split_name in {config.data.train_split, config.rankopt.threshold_split,
                     *_prediction_splits(config)} - {""}:
    feats[split_name] = trainer.predict(variables, trainer.splits[split_name],
                                        pooling)

  def pos(split_name):
    return (trainer.splits[split_name].labels == POSITIVE).astype(np.int32)

  train = config.data.train_split
  thr_split = config.rankopt.threshold_split or train
  result = rankopt.fit(
      feats[train]["pooled"], pos(train), radius=config.rankopt.radius or None,
      radius_scale=config.rankopt.radius_scale,
      max_steps=config.rankopt.max_steps,
      threshold_features=feats[thr_split]["pooled"],
      threshold_labels=pos(thr_split))
  train_scores = np.asarray(rankopt.decision_function(
      result, feats[train]["pooled"]))
  # predict.py maps scores to [0, 1] with sigmoid((s - threshold) / scale).
  rankopt.save(result, os.path.join(trainer.workdir, "rankopt.npz"),
               score_scale=float(np.std(train_scores)) or 1.0)
  heads = [(config.rankopt.report_as, float(result.threshold),
            lambda x: rankopt.decision_function(result, x))]
  if config.rankopt.get("logistic_regression", False):
    model, _ = linear_baselines.select_l2(
        feats[train]["pooled"], pos(train), feats[thr_split]["pooled"],
        pos(thr_split))
    thr_scores = np.asarray(linear_baselines.predict_proba(
        model, feats[thr_split]["pooled"]))
    heads.append((config.rankopt.logistic_regression_report_as,
                  metrics_lib.youden_threshold(pos(thr_split), thr_scores),
                  lambda x: linear_baselines.predict_proba(model, x)))
  rows = []
  for name, threshold, score_fn in heads:
    for split_name in _prediction_splits(config):
      split, out = trainer.splits[split_name], feats[split_name]
      scores = np.asarray(score_fn(out["pooled"]))
      ja = per_image_jaccard(out, split, config.data.crop_size)
      write_predictions(_predictions_path(trainer.workdir, split_name, name),
                        split, scores, ja)
      if split_name == config.data.eval_split:
        row = metrics_row(name, split, scores, threshold, ja)
        row["stage"] = stage_name
        rows.append(row)
  return rows


def _prediction_splits(config) -> list[str]:
  """The evaluation split, then the validation split if it is another one."""
  names = [config.data.eval_split]
  if config.data.val_split and config.data.val_split != config.data.eval_split:
    names.append(config.data.val_split)
  return names


def _predictions_path(workdir: str, split_name: str, row_name: str) -> str:
  return os.path.join(workdir, "predictions", split_name,
                      row_slug(row_name) + ".csv")
