"""The network and what defines it: FBA-Net, its losses, model files and their header,
the import of the authors' checkpoints, and the bundled models.

:mod:`fbanet.model.header` reads a model file's header without PyTorch (the Slicer panels
list models with it), so this package's ``__init__`` imports nothing.
"""
