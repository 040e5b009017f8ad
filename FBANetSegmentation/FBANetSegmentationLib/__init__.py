"""FBANet Segmentation's logic, free of Qt and GUI code (runs under pytest with slicer-core).

- :mod:`.environment`: the fbanet package, the worker's Python, dependencies, GPUs.
- :mod:`.models`: model choices (bundled, trained, file) and their descriptions.
- :mod:`.logic`: volumes to files and results back into the scene (MRML only).
- :mod:`.job`: one segmentation run in a background process.
- :mod:`.testing`: synthetic data and a tiny model for self-tests.
"""
