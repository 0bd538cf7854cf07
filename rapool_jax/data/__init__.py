"""Data sets (TFDS builders) and the input pipeline."""
