"""Evaluation: results rows, per-image predictions and the linear heads.

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
import os
import re

import jax
import numpy as np

from rapool_jax import linear_baselines
from rapool_jax import metrics as metrics_lib
from rapool_jax import rankopt
from rapool_jax.data import pipeline

POSITIVE = 1  # melanoma is class 1 in both tasks


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
