"""Logic of the FBANetTraining module, free of Qt so that it runs under pytest.

- dataset: scene nodes -> checked label maps and cases (Slicer's segmentation export)
- writer: the dataset's NRRD files and manifest, written by a worker thread from copies
- modelfiles: the atomic copy of a model file into the models folder
- settings: the panel's settings and the ``fbanet train`` flags they make
- lifecycle: starting, stopping, scene close and exit of the background jobs
- jobexport: the training job for a GPU machine (dataset, config, commands), and importing
  the model it made
- runner: background ``fbanet`` processes (training with stop/resume, review jobs)
- charts: live loss / validation Dice chart as MRML table and plot nodes
- review: segmenting and ranking the unlabeled volumes after training
- logic: the panel's logic, tying these together
- synthetic: synthetic scenes for the tests and the self-test
"""

import sys as _sys
from pathlib import Path as _Path


def _ensureFbanetImportable() -> None:
    """Use ``<repo>/src`` when the module runs from a source checkout without fbanet installed."""
    try:
        import fbanet  # noqa: F401
        import fbanet_slicer  # noqa: F401 (the Slicer-side helpers both modules use)
    except ImportError:
        source = _Path(__file__).resolve().parents[2] / "src"
        if (source / "fbanet" / "__init__.py").is_file():
            _sys.path.insert(0, str(source))


_ensureFbanetImportable()
