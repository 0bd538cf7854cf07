"""Sweeps, ablations and their fan-out over processes, accelerators or SLURM."""
