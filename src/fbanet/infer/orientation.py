"""Scans in the orientation the model was trained in: array axes along the patient's axes.

The training volumes are axial: X and Y span the patient's left-right and
anterior-posterior axes, Z runs along the body; training's random rotations and flips act
in the (X, Y) plane, and so does test-time mirroring. A scan stored sagittally or
coronally has its array axes in another order: fed as stored, the network would see
sagittal planes where it learnt axial ones, and mirroring would flip the wrong axes. So
the segmenter first transposes the array into the patient's axis order (an exact
permutation: no interpolation, physically the same scan), and transposes the result back.
The direction of each axis (e.g. head-to-feet or feet-to-head) is kept as stored.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from fbanet.data.preprocess import IndexBox
from fbanet.io.volumes import Geometry, Volume

Order = tuple[int, int, int]
IDENTITY: Order = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class AxisOrder:
    """A reordering of a scan's array axes.

    Attributes:
        order: ``order[j]`` is the stored array axis that becomes axis j.
    """

    order: Order = IDENTITY

    @property
    def is_identity(self) -> bool:
        """Whether the scan is already in this order."""
        return self.order == IDENTITY

    def volume(self, volume: Volume) -> Volume:
        """``volume`` with its axes reordered; the same voxels at the same physical points."""
        if self.is_identity:
            return volume
        g = volume.geometry
        columns = np.asarray(g.direction, dtype=float).reshape(3, 3)[:, list(self.order)]
        geometry = Geometry(
            tuple(g.spacing[a] for a in self.order),  # type: ignore[arg-type]
            g.origin,  # voxel (0, 0, 0) stays where it is
            tuple(float(v) for v in columns.ravel()),
        )
        array = np.ascontiguousarray(np.transpose(volume.array, self.order))
        return Volume(array, geometry)

    def box(self, box: IndexBox) -> IndexBox:
        """``box`` (in stored axes) in the reordered axes."""
        start = tuple(box.start[a] for a in self.order)
        stop = tuple(box.stop[a] for a in self.order)
        return IndexBox(start, stop)  # type: ignore[arg-type]

    def restore(self, channels: np.ndarray) -> np.ndarray:
        """Channels (C, X, Y, Z) in the reordered axes back in the stored axes' order."""
        if self.is_identity:
            return channels
        inverse = np.argsort(self.order)
        return np.ascontiguousarray(np.transpose(channels, (0, *(1 + inverse))))


def training_axis_order(geometry: Geometry) -> AxisOrder:
    """The reordering that puts the array axes along the patient's X, Y, Z (LPS) axes.

    Each array axis goes to the patient axis its direction is closest to; for an oblique
    scan, the assignment whose directions are closest overall (the stored order on a tie).
    """
    alignment = np.abs(np.asarray(geometry.direction, dtype=float).reshape(3, 3))
    best, best_score = IDENTITY, -1.0
    for order in itertools.permutations(range(3)):
        # alignment[j, order[j]]: how well stored axis order[j] follows patient axis j.
        score = float(sum(alignment[j, a] for j, a in enumerate(order)))
        if score > best_score + 1e-9:
            best, best_score = order, score  # type: ignore[assignment]
    return AxisOrder(best)
