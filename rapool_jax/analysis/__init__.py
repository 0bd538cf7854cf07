"""Reports on per-image scores, as pandas frames.

* ``frames``: tidy frames (image, label, fold, seed, arm, score), exact seed
  averages, strata joined by image id;
* ``runs``: runs on disk -> a tidy frame per split, arms by name;
* ``design``: the arms by name and the comparisons a config declares;
* ``paired``: paired AUC and sensitivity comparisons (``stats.py``), pooled,
  fold-stratified, by stratum, and bootstrap replicates for interactions;
* ``tables`` and ``recompute``: markdown, figures, and ``--check``;
* ``crossval`` / ``crossval_text``, ``testsplit``, ``power``: the reports
  behind ``launch/crossval_report.py`` and ``launch/testsplit_report.py``;
* ``robustness`` / ``robustness_report``: where region pooling matters
  (``launch/robustness.py``).
* ``run_dirs`` and ``run_tables``: the fan-out's job lists and run folders
  read back, and tables of many runs' ``results.json`` (``launch/aggregate.py``);
* ``sweeps`` and ``classifiers``: the paper's Tables 1-2 and Table 3
  (``launch/sweep_lambda.py``, ``ablate_pooling.py``, ``compare_classifiers.py``).

For example, RAP - GAP control out of fold on images with a ruler::

    avg = crossval.seed_averaged_scores("results/crossval_isic2017")
    avg = frames.join_strata(avg, flags)   # flags: image, ruler (0/1)
    paired.compare_by_stratum(avg, "joint", "gap_control", "ruler")
    paired.interaction(avg, "joint", "gap_control", "ruler")
"""
