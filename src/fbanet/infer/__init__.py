"""Inference: the segmenter, sliding-window prediction, window placement, post-processing,
output files, decoder-disagreement ranking and evaluation against reference labels."""
