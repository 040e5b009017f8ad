"""Semi-supervised training: the trainer, checkpoints, run folders, progress reporting, curves."""
