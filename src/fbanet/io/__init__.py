"""Reading and writing what users hand us: volumes, segmentation files, segment metadata, previews.

The lowest layer of fbanet: it imports nothing of the package but :mod:`fbanet.config`.
"""
