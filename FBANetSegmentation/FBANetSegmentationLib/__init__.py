"""FBANet Segmentation's logic, free of Qt and GUI code (runs under pytest with slicer-core).

- :mod:`.environment`: finding the fbanet package (the workers' Python, packages and
  devices are :mod:`fbanet.cli.environment`, shared with FBANet Training).
- :mod:`.models`: model choices (bundled, trained, file) and their descriptions.
- :mod:`.logic`: volumes to files and results back into the scene (MRML only).
- :mod:`.job`: one segmentation run in a background process.
- :mod:`.testing`: synthetic data and a tiny model for self-tests.
"""

from pathlib import Path as _Path

from .environment import ensureFbanetImportable as _ensureFbanetImportable

# Importing this package makes ``import fbanet`` work (a source checkout adds <repo>/src).
_ensureFbanetImportable(_Path(__file__).resolve().parent.parent)
