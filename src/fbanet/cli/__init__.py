"""The ``fbanet`` command line and the background-worker helpers that run it.

Imports nothing at package level, so that the Slicer panels can import
:mod:`fbanet.cli.worker` without PyTorch.
"""
