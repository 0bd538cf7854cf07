"""Reports on per-image scores, as pandas frames.

* ``frames``: runs' prediction CSVs -> tidy frames (image, label, fold, seed,
  arm, score), seed averages, strata joined by image id;
* ``design``: the arms by name and the comparisons a config declares;
* ``paired``: paired AUC and sensitivity comparisons (``stats.py``), pooled,
  fold-stratified, by stratum, and bootstrap replicates for interactions;
* ``tables``: markdown tables, figures, and ``--check``'s recomputation;
* ``crossval`` / ``crossval_text`` and ``testsplit``: the two reports.
"""
