"""Table 3 of the paper: classifiers on the same pooled features
(``launch/compare_classifiers.py``), each at its own threshold and at a
specificity read off the evaluation ROC itself."""

from __future__ import annotations

import os

import numpy as np

from rapool_jax import linear_baselines
from rapool_jax import metrics
from rapool_jax import rankopt
from rapool_jax.analysis import run_tables as rt
from rapool_jax.analysis import sweeps
from rapool_jax.analysis import tables

PAPER_SPECIFICITY = 0.884
# Table 3 of Yang et al. 2018 (ISIC 2017 test): Sen, Spe, Acc, AUC.
PAPER_TABLE3 = (("ResNet50+RAPooling", 0.444, 0.923, 0.833, 0.838),
                ("ResNet50+RAPooling+RankOpt", 0.607, 0.884, 0.833, 0.842))
POINT = ("sensitivity", "specificity", "accuracy")


def _fit_rankopt(feats):
  config = feats["config"]
  kwargs = {}
  if "threshold" in feats:
    kwargs = dict(threshold_features=feats["threshold"]["pooled"],
                  threshold_labels=feats["threshold"]["labels"])
  if "radius_scale" in config.rankopt:
    kwargs["radius_scale"] = config.rankopt.radius_scale
  return rankopt.fit(feats["train"]["pooled"], feats["train"]["labels"],
                     radius=config.rankopt.radius or None,
                     max_steps=config.rankopt.max_steps, **kwargs)


def _rankopt(feats) -> dict:
  """RankOpt as the run fitted it, else refitted."""
  if feats["rankopt"] is not None:
    result, note = feats["rankopt"][0], "as fitted by the run"
  else:
    result, note = _fit_rankopt(feats), "refitted (the run has no rankopt.npz)"
  where = feats["threshold"]["split"] if "threshold" in feats else "train"
  return {"name": f"RankOpt @ Youden({where})",
          "scores": np.asarray(rankopt.decision_function(
              result, feats["eval"]["pooled"])),
          "threshold": float(result.threshold), "note": note}


def score_classifiers(feats, l2_grid=(1e-4, 1e-3, 1e-2, 1e-1, 1.0)
                      ) -> list[dict]:
  """[{name, scores [N_eval], threshold, note}] of every compared classifier:
  the softmax head, RankOpt and logistic regression (L2 by validation AUC)."""
  ev, tr = feats["eval"], feats["train"]
  val_name = feats["val"]["split"] if feats.get("val") else "train"
  val = feats.get("val") or {**tr}
  youden = f"Youden({val_name})"
  out = [{"name": "softmax head @ 0.5", "scores": ev["probs"][:, 1],
          "threshold": 0.5, "note": "the network's own prediction"},
         {"name": f"softmax head @ {youden}", "scores": ev["probs"][:, 1],
          "threshold": metrics.youden_threshold(val["labels"],
                                                val["probs"][:, 1]),
          "note": "threshold chosen as RankOpt's is"}, _rankopt(feats)]
  model, aucs = linear_baselines.select_l2(
      tr["pooled"], tr["labels"], val["pooled"], val["labels"], l2_grid)
  lr_val = np.asarray(linear_baselines.predict_proba(model, val["pooled"]))
  lr_eval = np.asarray(linear_baselines.predict_proba(model, ev["pooled"]))
  note = (f"balanced, L2={model.l2:g} (best {val_name} AUC of "
          f"{', '.join(f'{k:g}: {v:.3f}' for k, v in sorted(aucs.items()))})")
  out += [{"name": "logistic regression @ 0.5", "scores": lr_eval,
           "threshold": 0.5, "note": note},
          {"name": f"logistic regression @ {youden}", "scores": lr_eval,
           "threshold": metrics.youden_threshold(val["labels"], lr_val),
           "note": note}]
  return out


def evaluate(classifiers, labels, specificity: float = PAPER_SPECIFICITY):
  """Metric rows: at each classifier's threshold and at ``specificity``."""
  rows = []
  for c in classifiers:
    at = metrics.classification_metrics(labels, c["scores"], c["threshold"])
    t_spec = metrics.threshold_at_specificity(labels, c["scores"], specificity)
    at_spec = metrics.classification_metrics(labels, c["scores"], t_spec)
    rows.append({"name": c["name"], "note": c["note"], "auc": at["auc"],
                 "threshold": at["threshold"], **{k: at[k] for k in POINT},
                 "at_spec": {k: at_spec[k] for k in ("threshold", *POINT)}})
  return rows


def markdown(run: str, feats, rows, specificity: float) -> str:
  ev, tr = feats["eval"], feats["train"]
  body = [[r["name"], rt.fmt(r["auc"]), f"{r['threshold']:.4g}"] +
          [rt.fmt(r[k]) for k in POINT] +
          [rt.fmt(r["at_spec"][k]) for k in POINT] for r in rows]
  table = rt.markdown_table(
      ["classifier", "AUC", "threshold", "Sen", "Spe", "Acc",
       f"Sen @ Spe≥{specificity:g}", "Spe", "Acc"], body)
  notes = "\n".join(f"- {r['name']}: {r['note']}" for r in rows)
  return (f"# Table 3: classifiers on the pooled features of `{run}`\n\n"
          f"Features: pooling `{feats['pooling']}`, "
          f"{ev['pooled'].shape[1]}-d. Fitted on `{tr['split']}` "
          f"({len(tr['labels'])} images); evaluated on "
          f"`{ev['split']}` ({len(ev['labels'])} images, "
          f"{int(ev['labels'].sum())} positive). The Spe≥{specificity:g} "
          "columns use the threshold read off this evaluation ROC.\n\n" +
          table + "\n" + notes + "\n\n" + sweeps.paper_table(PAPER_TABLE3))


def table3(out_dir: str, run: str, feats,
           specificity: float = PAPER_SPECIFICITY) -> str:
  """``out_dir/table3.md/.json`` and ``table3_roc.png``."""
  classifiers = score_classifiers(feats)
  labels = feats["eval"]["labels"]
  rows = evaluate(classifiers, labels, specificity)
  text = markdown(run, feats, rows, specificity)
  sweeps.write_table(out_dir, "table3", text, {
      "run": run, "eval_split": feats["eval"]["split"], "rows": rows})
  plot_roc(os.path.join(out_dir, "table3_roc.png"), classifiers, rows, labels)
  return text


def plot_roc(path, classifiers, rows, labels):
  """A curve per score vector, a dot per classifier's threshold."""
  fig, ax = tables.plt.subplots(figsize=(5.5, 5))
  seen = {}
  for c, r in zip(classifiers, rows):
    key = id(c["scores"])
    if key not in seen:
      fpr, tpr, _ = metrics.roc_curve(labels, c["scores"])
      seen[key] = ax.plot(fpr, tpr, label=f"{c['name'].split(' @')[0]} "
                          f"(AUC {r['auc']:.3f})")[0].get_color()
    ax.plot(1 - r["specificity"], r["sensitivity"], "o", color=seen[key])
  ax.plot([0, 1], [0, 1], "k:", lw=0.8)
  ax.set_xlabel("1 - specificity")
  ax.set_ylabel("sensitivity")
  ax.set_title("ROC on pooled features (dots: chosen thresholds)")
  ax.legend(loc="lower right", fontsize=7)
  sweeps.save(fig, path)
