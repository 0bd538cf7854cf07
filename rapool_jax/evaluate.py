"""Evaluation: the model over whole splits, results rows, per-image
predictions and the linear heads.

Every reported model becomes a row of metrics on the evaluation split and a
CSV of per-image outputs (``WORKDIR/predictions/<split>/<row>.csv``) on every
reported split, so that paired tests, other thresholds and pooled
cross-validation tables can be recomputed from files. The linear heads
(RankOpt, Eq. 4-8, and a logistic regression to compare it with) are fitted
on the pooled training features of one stage.
"""

from __future__ import annotations

import csv
import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from rapool_jax import errors
from rapool_jax import linear_baselines
from rapool_jax import metrics as metrics_lib
from rapool_jax import pooling as pooling_lib
from rapool_jax import rankopt
from rapool_jax import sharding
from rapool_jax import train
from rapool_jax.data import pipeline

POSITIVE = 1  # melanoma is class 1 in both tasks


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


def make_predict_fn(model, mesh, mean, std, batch_size: int,
                    crop_size: int):
  """``predict(variables, split, pooling) -> dict``: ``eval_step`` over a
  whole split, centre-cropped, in batches of ``batch_size`` sharded over
  ``mesh``; host arrays with the split's length ``N`` in front."""

  @functools.cache  # one jitted step per pooling
  def step(pooling: str):
    return jax.jit(functools.partial(eval_step, model=model, pooling=pooling,
                                     mean=mean, std=std),
                   out_shardings=sharding.replicated(mesh))

  def predict(variables, split: pipeline.Split, pooling: str) -> dict:
    outs = []
    for lo in range(0, len(split), batch_size):
      images, masks = _padded(batch_size, split.images[lo:lo + batch_size],
                              split.masks[lo:lo + batch_size])
      images = pipeline.center_crop(images, crop_size)
      masks = pipeline.center_crop(masks, crop_size)
      out = step(pooling)(variables, sharding.put_global_batch(images, mesh),
                          sharding.put_global_batch(masks, mesh))
      n = min(batch_size, len(split) - lo)
      outs.append({k: sharding.to_host(v)[:n] for k, v in out.items()})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

  return predict


def _padded(size: int, *arrays) -> list:
  """Pads a last short batch to ``size`` rows: one compilation per pooling."""
  return [a if len(a) == size else np.concatenate(
      [a, np.zeros((size - len(a),) + a.shape[1:], a.dtype)]) for a in arrays]


def row_slug(name: str) -> str:
  """A row's file and column name: ``"Step 4: region pooling"`` ->
  ``step_4_region_pooling``."""
  return re.sub(r"[^a-z0-9.]+", "_", name.lower()).strip("_")


def predictions_path(workdir: str, split_name: str, row_name: str) -> str:
  return os.path.join(workdir, "predictions", split_name,
                      row_slug(row_name) + ".csv")


def prediction_splits(data) -> list[str]:
  """Where every reported model writes per-image predictions: the
  evaluation split, the validation split, then ``data.report_splits``."""
  others = (data.val_split, *data.get("report_splits", ()))
  return list(dict.fromkeys([data.eval_split, *filter(None, others)]))


def write_predictions(path: str, split: pipeline.Split, scores,
                      jaccards) -> None:
  """CSV of ``image,label,score,jaccard``; label 1 = melanoma, jaccard empty
  where the image has no mask."""
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  labels = (split.labels == POSITIVE).astype(int)
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image", "label", "score", "jaccard"])
    w.writerows([image, labels[i], repr(float(scores[i])),
                 "" if np.isnan(jaccards[i]) else f"{jaccards[i]:.6f}"]
                for i, image in enumerate(split.ids))


def per_image_jaccard(out: dict, split: pipeline.Split, crop_size: int):
  """``[N]`` Jaccard of the predicted mask, NaN where the image has no mask."""
  ja = np.full(len(split), np.nan)
  if split.has_mask.any():
    true = pipeline.center_crop(split.masks, crop_size)
    ja[split.has_mask] = metrics_lib.jaccard_per_image(
        out["seg_pred"][split.has_mask], true[split.has_mask])
  return ja


def validation_metrics(out: dict, split: pipeline.Split,
                       crop_size: int) -> dict:
  """``val_auc``, ``val_loss`` (cross-entropy) and ``val_jaccard`` (NaN
  without masks) of ``predict`` outputs on ``split``: what TensorBoard shows
  and the plateau rules (``train.PLATEAU_METRICS``) read."""
  p_true = out["probs"][np.arange(len(split)), split.labels]
  jaccards = per_image_jaccard(out, split, crop_size)
  # Melanoma vs the rest in either task (three_class labels are 0/1/2).
  return {"val_auc": metrics_lib.roc_auc(split.labels == POSITIVE,
                                         out["probs"][:, POSITIVE]),
          "val_loss": float(np.mean(-np.log(np.maximum(p_true, 1e-12)))),
          "val_jaccard": (float("nan") if np.isnan(jaccards).all()
                          else float(np.nanmean(jaccards)))}


def _write_rows(name: str, threshold: float, scores: dict, outs: dict,
                splits: dict, data, workdir: str) -> dict | None:
  """Writes ``name``'s per-image ``scores`` (``{split: [N]}``) with the
  Jaccard of ``outs`` (``predict``'s, per split); returns its results row on
  the evaluation split (None if it has no scores there). ``_labels`` and
  ``_scores`` travel to the ROC plot only."""
  row = None
  for split_name, out in outs.items():
    split, s = splits[split_name], np.asarray(scores[split_name])
    ja = per_image_jaccard(out, split, data.crop_size)
    write_predictions(predictions_path(workdir, split_name, name), split, s,
                      ja)
    if split_name == data.eval_split:
      labels = (split.labels == POSITIVE).astype(np.int32)
      row = {"model": name,
             **metrics_lib.classification_metrics(labels, s, threshold),
             "_labels": labels, "_scores": s}
      if not np.all(np.isnan(ja)):
        row["jaccard"] = float(np.nanmean(ja))
  return row


def evaluate_network(predict_fn, splits: dict, data, workdir: str, name: str,
                     variables, pooling: str) -> dict:
  """Row of a trained network on ``data.eval_split`` (softmax, threshold
  0.5); writes its per-image predictions on every reported split."""
  outs = {}
  for split_name in prediction_splits(data):
    split = splits[split_name]
    missing = int((~split.has_mask).sum())
    if pooling_lib.reads_mask(pooling) and missing:
      # Every image without a mask would get the same score: the evaluation
      # split must have them all; any other split goes without this row.
      what = (f"{name}: {missing} of the {len(split)} images of split "
              f"{split_name!r} have no mask, which pooling={pooling!r} reads")
      if split_name == data.eval_split:
        raise errors.UserError(what)
      print(f"{what}: no predictions written for {split_name!r}", flush=True)
    else:
      outs[split_name] = predict_fn(variables, split, pooling)
  scores = {n: out["probs"][:, POSITIVE] for n, out in outs.items()}
  return _write_rows(name, 0.5, scores, outs, splits, data, workdir)


def fit_linear_heads(predict_fn, splits: dict, data, rankopt_config,
                     workdir: str, variables, pooling: str) -> list[dict]:
  """RankOpt (and, with ``rankopt_config.logistic_regression``, a
  class-balanced L2 logistic regression) on the pooled training features of
  ``variables``; a row per head, thresholds from
  ``rankopt_config.threshold_split`` (validation), never from the evaluation
  split. Writes ``rankopt.npz`` and the heads' per-image predictions."""
  names = {data.train_split, rankopt_config.threshold_split,
           *prediction_splits(data)} - {""}
  feats = {n: predict_fn(variables, splits[n], pooling) for n in names}
  x = {n: feats[n]["pooled"] for n in names}
  y = {n: (splits[n].labels == POSITIVE).astype(np.int32) for n in names}
  train = data.train_split
  thr = rankopt_config.threshold_split or train
  heads = [_rankopt_head(x, y, train, thr, rankopt_config, workdir)]
  if rankopt_config.get("logistic_regression", False):
    model, _ = linear_baselines.select_l2(x[train], y[train], x[thr], y[thr])
    threshold = metrics_lib.youden_threshold(
        y[thr], np.asarray(linear_baselines.predict_proba(model, x[thr])))
    heads.append((rankopt_config.logistic_regression_report_as, threshold,
                  lambda f: linear_baselines.predict_proba(model, f)))
  outs = {n: feats[n] for n in prediction_splits(data)}
  return [_write_rows(name, threshold, {n: score_fn(x[n]) for n in outs},
                      outs, splits, data, workdir)
          for name, threshold, score_fn in heads]


def _rankopt_head(x, y, train: str, thr: str, rankopt_config, workdir: str):
  """RankOpt (Eq. 4-8) fitted on ``x[train]``, its threshold from
  ``x[thr]``; saved for ``predict.py``. Returns ``(name, threshold, fn)``."""
  result = rankopt.fit(
      x[train], y[train], radius=rankopt_config.radius or None,
      radius_scale=rankopt_config.radius_scale,
      max_steps=rankopt_config.max_steps, threshold_features=x[thr],
      threshold_labels=y[thr])
  train_scores = np.asarray(rankopt.decision_function(result, x[train]))
  # predict.py maps scores to [0, 1] with sigmoid((s - threshold) / scale).
  if jax.process_index() == 0:
    rankopt.save(result, os.path.join(workdir, "rankopt.npz"),
                 score_scale=float(np.std(train_scores)) or 1.0)
  return (rankopt_config.report_as, float(result.threshold),
          lambda f: rankopt.decision_function(result, f))


def check_heads(config) -> None:
  """``config.rankopt``: its stage exists, its numbers lie in their ranges."""
  rankopt_config = config.rankopt
  if (rankopt_config.enabled
      and rankopt_config.after_stage not in config.stage_order):
    raise errors.UserError(f"config.rankopt.after_stage="
                           f"{rankopt_config.after_stage!r} is not in "
                           f"config.stage_order {tuple(config.stage_order)}")
  errors.check_range("config.rankopt.radius", rankopt_config.radius, low=0)
  errors.check_range("config.rankopt.radius_scale",
                     rankopt_config.radius_scale, low=0, low_open=True)
  errors.check_range("config.rankopt.max_steps", rankopt_config.max_steps,
                     low=1)
