"""FBANet: semi-supervised 3D segmentation with FBA-Net (Chung et al., MICCAI 2023)."""

# One constant, read by the build (pyproject) and by copies of the package that were not
# pip-installed (the Slicer extension ships the source folder), so model files always record
# the real version.
__version__ = "0.1.0"

__all__ = ["__version__"]
