"""The performance lab: timing runs, the PyTorch reference, profiles (not installed)."""
