"""Analyses of runs ' per-image scores: tidy frames, paired comparisons, tables."""
