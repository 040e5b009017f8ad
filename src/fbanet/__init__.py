"""FBANet: semi-supervised 3D segmentation with FBA-Net (Chung et al., MICCAI 2023)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fbanet")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
