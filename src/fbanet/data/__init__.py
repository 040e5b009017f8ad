"""Training data: manifests and case lists, loading and checking cases, preprocessing, patches."""
