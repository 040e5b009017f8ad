"""fbanet's version: a leaf module (no imports), read by the build and by every layer.

The build reads it (``pyproject.toml``: ``dynamic = ["version"]``), and so do copies of the
package that were not pip-installed (the Slicer extension ships the source folder), so model
files always record the real version. Lower layers import it from here, never from
``fbanet/__init__.py``.
"""

__version__ = "0.6.0"
