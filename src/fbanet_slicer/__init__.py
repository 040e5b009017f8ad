"""The 3D Slicer application side shared by both FBANet modules (installing, error display).

Kept out of :mod:`fbanet`, which never imports Slicer; this package may (inside functions,
when Slicer runs them). It ships with the extension next to ``fbanet``, not in fbanet's
wheel.
"""
