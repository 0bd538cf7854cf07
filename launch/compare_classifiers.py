"""Table 3: classifiers on the same pooled features of a finished run.

    python -m launch.compare_classifiers --run RUN [--workdir OUT] [--sklearn]

On the evaluation split, from RUN's final pooled features: the network's
softmax head (at 0.5, the paper's "ResNet50+RAPooling" row, and at the Youden
threshold on validation); RankOpt as the run fitted it (refitted without
``RUN/rankopt.npz``) at its own threshold; class-weighted L2 logistic
regression (``rapool_jax.linear_baselines``, L2 by validation AUC) at 0.5 and
at Youden; ``--sklearn`` adds sklearn's. Each at its threshold and at the
threshold reaching specificity 0.884 (the paper's RankOpt point) read off the
evaluation ROC itself: the curves compared at one specificity, not a
threshold one could have chosen beforehand. Writes ``OUT/table3.md``,
``.json`` and ``table3_roc.png`` (OUT: ``RUN/table3``). ``--smoke`` without
``--run`` first trains ``configs/tiny.py`` into ``OUT/run``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression

from launch import aggregate
from launch import common
from launch import fanout
from rapool_jax import config_lib
from rapool_jax import linear_baselines
from rapool_jax import metrics
from rapool_jax import rankopt
from rapool_jax import run as run_lib
from rapool_jax.data import pipeline

PAPER_SPECIFICITY = 0.884
# Table 3 of Yang et al. 2018 (ISIC 2017 test): Sen, Spe, Acc, AUC.
PAPER_TABLE3 = (("ResNet50+RAPooling", 0.444, 0.923, 0.833, 0.838),
                ("ResNet50+RAPooling+RankOpt", 0.607, 0.884, 0.833, 0.842))


def run_features(run: str, data_dir: str = "") -> dict:
  """Pooled features, head probabilities and labels of RUN's final network.

  Returns ``{split role: {"pooled" [N, D], "probs" [N, K], "labels" [N]}}``
  for the roles train, val, eval, plus ``config`` and ``rankopt`` (the fitted
  ``(result, extra)`` or None).
  """
  # predict defines absl flags that clash with main's, which the docs' dry
  # parse (tests/test_commands.py) imports beside this module.
  from rapool_jax import predict  # pylint: disable=g-import-not-at-top
  config, _, variables, pooling, fitted = predict.load_run(run)
  # A run made before a config key existed: the key's default.
  _fill_missing(config, config_lib.base_config())
  if data_dir:
    config.data.data_dir = data_dir
  job = run_lib.setup(config, run)
  out = {"config": config, "rankopt": fitted, "pooling": pooling}
  for role, key in (("train", "train_split"), ("val", "val_split"),
                    ("eval", "eval_split")):
    name = config.data[key]
    if not name:
      continue
    split = job.splits[name]
    pred = job.predict(variables, split, pooling)
    out[role] = {"split": name, "pooled": pred["pooled"],
                 "probs": pred["probs"],
                 "labels": (split.labels == 1).astype(np.int32)}
  if config.rankopt.threshold_split:
    name = config.rankopt.threshold_split
    split = job.splits.get(name)
    if split is None:
      split = pipeline.load_split(pipeline.make_builder(config.data), name,
                                  config.data.task)
    pred = job.predict(variables, split, pooling)
    out["threshold"] = {"split": name, "pooled": pred["pooled"],
                        "labels": (split.labels == 1).astype(np.int32)}
  return out


def _fill_missing(config, defaults) -> None:
  """Adds the keys of ``defaults`` that ``config`` lacks, recursively."""
  for key in defaults.keys():
    if key not in config:
      config[key] = defaults[key]
    elif hasattr(config[key], "keys") and hasattr(defaults[key], "keys"):
      _fill_missing(config[key], defaults[key])


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


def score_classifiers(feats, l2_grid=(1e-4, 1e-3, 1e-2, 1e-1, 1.0),
                      use_sklearn: bool = False) -> list[dict]:
  """[{name, scores [N_eval], threshold, note}] of every compared classifier."""
  ev, tr = feats["eval"], feats["train"]
  val = feats.get("val")
  val_name = val["split"] if val else "train"
  val = val or {**tr}
  out = []
  head_val = val["probs"][:, 1]
  out.append({"name": "softmax head @ 0.5", "scores": ev["probs"][:, 1],
              "threshold": 0.5, "note": "the network's own prediction"})
  out.append({"name": f"softmax head @ Youden({val_name})",
              "scores": ev["probs"][:, 1],
              "threshold": metrics.youden_threshold(val["labels"], head_val),
              "note": "threshold chosen as RankOpt's is"})
  if feats["rankopt"] is not None:
    result, note = feats["rankopt"][0], "as fitted by the run"
  else:
    result, note = _fit_rankopt(feats), "refitted (the run has no rankopt.npz)"
  where = feats["threshold"]["split"] if "threshold" in feats else "train"
  out.append({"name": f"RankOpt @ Youden({where})",
              "scores": np.asarray(
                  rankopt.decision_function(result, ev["pooled"])),
              "threshold": float(result.threshold), "note": note})
  model, aucs = linear_baselines.select_l2(
      tr["pooled"], tr["labels"], val["pooled"], val["labels"], l2_grid)
  lr_val = np.asarray(linear_baselines.predict_proba(model, val["pooled"]))
  lr_eval = np.asarray(linear_baselines.predict_proba(model, ev["pooled"]))
  note = (f"balanced, L2={model.l2:g} (best {val_name} AUC of "
          f"{', '.join(f'{k:g}: {v:.3f}' for k, v in sorted(aucs.items()))})")
  out.append({"name": "logistic regression @ 0.5", "scores": lr_eval,
              "threshold": 0.5, "note": note})
  out.append({"name": f"logistic regression @ Youden({val_name})",
              "scores": lr_eval,
              "threshold": metrics.youden_threshold(val["labels"], lr_val),
              "note": note})
  if use_sklearn:
    x_mean, x_std = np.asarray(model.mean), np.asarray(model.std)
    sk = LogisticRegression(C=1.0 / (model.l2 * len(tr["labels"])),
                            class_weight="balanced", max_iter=5000).fit(
                                (tr["pooled"] - x_mean) / x_std, tr["labels"])
    out.append({"name": "sklearn logistic regression @ 0.5",
                "scores": sk.predict_proba(
                    (ev["pooled"] - x_mean) / x_std)[:, 1],
                "threshold": 0.5, "note": "cross-check, same L2"})
  return out


def evaluate(classifiers, labels, specificity: float = PAPER_SPECIFICITY):
  """Metric rows: at each classifier's threshold and at ``specificity``."""
  rows = []
  for c in classifiers:
    at = metrics.classification_metrics(labels, c["scores"], c["threshold"])
    t_spec = metrics.threshold_at_specificity(labels, c["scores"], specificity)
    at_spec = metrics.classification_metrics(labels, c["scores"], t_spec)
    rows.append({"name": c["name"], "note": c["note"], "auc": at["auc"],
                 "threshold": at["threshold"],
                 **{k: at[k] for k in
                    ("sensitivity", "specificity", "accuracy")},
                 "at_spec": {k: at_spec[k] for k in
                             ("threshold", "sensitivity", "specificity",
                              "accuracy")}})
  return rows


def write_table(out_dir: str, run: str, feats, classifiers, rows,
                specificity: float) -> str:
  ev = feats["eval"]
  header = ["classifier", "AUC", "threshold", "Sen", "Spe", "Acc",
            f"Sen @ Spe≥{specificity:g}", "Spe", "Acc"]
  body = [[r["name"], aggregate.fmt(r["auc"]), f"{r['threshold']:.4g}",
           aggregate.fmt(r["sensitivity"]), aggregate.fmt(r["specificity"]),
           aggregate.fmt(r["accuracy"]),
           aggregate.fmt(r["at_spec"]["sensitivity"]),
           aggregate.fmt(r["at_spec"]["specificity"]),
           aggregate.fmt(r["at_spec"]["accuracy"])] for r in rows]
  notes = "\n".join(f"- {r['name']}: {r['note']}" for r in rows)
  paper = aggregate.markdown_table(
      ["paper (ISIC 2017 test)", "Sen", "Spe", "Acc", "AUC"],
      [[n] + [f"{v:.3f}" for v in vals] for n, *vals in PAPER_TABLE3])
  text = (f"# Table 3: classifiers on the pooled features of `{run}`\n\n"
          f"Features: pooling `{feats['pooling']}`, "
          f"{ev['pooled'].shape[1]}-d. Fitted on `{feats['train']['split']}` "
          f"({len(feats['train']['labels'])} images); evaluated on "
          f"`{ev['split']}` ({len(ev['labels'])} images, "
          f"{int(ev['labels'].sum())} positive). The Spe≥{specificity:g} "
          "columns use the threshold read off this evaluation ROC.\n\n" +
          aggregate.markdown_table(header, body) + "\n" + notes + "\n\n" +
          paper)
  common.write_table(out_dir, "table3", text,
                     {"run": run, "eval_split": ev["split"], "rows": rows})
  plot_roc(os.path.join(out_dir, "table3_roc.png"), classifiers, rows,
           ev["labels"])
  return text


def plot_roc(path, classifiers, rows, labels):
  with common.figure(path, figsize=(5.5, 5)) as (_, ax):
    seen = {}
    for c, r in zip(classifiers, rows):
      key = id(c["scores"])  # a curve per score vector, a dot per threshold
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


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", default="", help="workdir of a finished run")
  parser.add_argument("--workdir", default="",
                      help="where the table goes (default RUN/table3)")
  parser.add_argument("--data-dir", default="",
                      help="TFDS data_dir, if not the run's")
  parser.add_argument("--sklearn", action="store_true",
                      help="add sklearn's logistic regression as a cross-check")
  parser.add_argument("--smoke", action="store_true",
                      help="without --run: train configs/tiny.py into OUT/run")
  args, overrides = common.parse_args(parser, argv)
  run = args.run
  if not run:
    if not (args.smoke and args.workdir):
      raise SystemExit("--run RUN is required (or --smoke --workdir OUT)")
    root = os.path.abspath(args.workdir)
    config = common.resolve_config(None, True)
    run = os.path.join(root, "run")
    jobs = [fanout.prepare_job(root, config, overrides),
            fanout.Job(name="run", workdir=run, config=config,
                       overrides=list(overrides))]
    if not fanout.execute(args, jobs, root):
      return 0
    if not fanout.is_finished(jobs[1]):
      return 1
  run = os.path.abspath(run)
  out_dir = os.path.abspath(args.workdir or os.path.join(run, "table3"))
  os.makedirs(out_dir, exist_ok=True)
  feats = run_features(run, args.data_dir)
  classifiers = score_classifiers(feats, use_sklearn=args.sklearn)
  rows = evaluate(classifiers, feats["eval"]["labels"])
  write_table(out_dir, run, feats, classifiers, rows, PAPER_SPECIFICITY)
  return 0


if __name__ == "__main__":
  sys.exit(main())
