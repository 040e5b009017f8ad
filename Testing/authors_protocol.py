"""The authors' window placement, written out independently of fbanet (for tests)."""

from __future__ import annotations

import math


def authors_starts(shape, patch, stride) -> list[tuple[int, int, int]]:
    """The nested loops of the authors' test_single_case, written out independently."""
    ww, hh, dd = shape
    sx = math.ceil((ww - patch[0]) / stride[0]) + 1
    sy = math.ceil((hh - patch[1]) / stride[1]) + 1
    sz = math.ceil((dd - patch[2]) / stride[2]) + 1
    out = []
    for x in range(sx):
        xs = min(stride[0] * x, ww - patch[0])
        for y in range(sy):
            ys = min(stride[1] * y, hh - patch[1])
            for z in range(sz):
                zs = min(stride[2] * z, dd - patch[2])
                out.append((xs, ys, zs))
    return out
