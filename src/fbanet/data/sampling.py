"""Augmentation, random crops and the two-stream (labeled + unlabeled) batch sampler.

All randomness comes from numpy Generators that are passed in or seeded explicitly, and
every sampler can save and restore its state, so a resumed run draws the same batches.
Volumes are (X, Y, Z); X, Y are in-plane and Z is the slice axis.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from fbanet.config import check_int
from fbanet.data.cases import Case
from fbanet.data.intensity import RegionNormalization, foreground_box, region_normalized
from fbanet.data.preprocess import IndexBox

logger = logging.getLogger(__name__)


def _check_pair(image: np.ndarray, label: np.ndarray | None) -> None:
    if image.ndim != 3:
        raise ValueError(f"image must be 3D (X, Y, Z), got shape {image.shape}")
    if label is not None and label.shape != image.shape:
        raise ValueError(f"label shape {label.shape} differs from image shape {image.shape}")


def rot_flip_views(
    image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rotate by a random multiple of 90 degrees in the (X, Y) plane, then flip X or Y.

    Args:
        image: (X, Y, Z).
        label: (X, Y, Z) or None; transformed identically.
        rng: Source of the random choices.

    Returns:
        Views (no copy); (X, Y) swap for odd rotations.
    """
    k = int(rng.integers(0, 4))
    axis = int(rng.integers(0, 2))

    def apply(array: np.ndarray) -> np.ndarray:
        return np.flip(np.rot90(array, k, axes=(0, 1)), axis=axis)

    return apply(image), None if label is None else apply(label)


def _check_patch(patch_size: Sequence[int]) -> tuple[int, int, int]:
    patch = tuple(patch_size)
    if len(patch) != 3 or any(
        isinstance(p, bool) or not isinstance(p, (int, np.integer)) for p in patch
    ):
        raise TypeError(f"patch_size must be 3 ints (X, Y, Z), got {patch_size!r}")
    if any(p <= 0 for p in patch):
        raise ValueError(f"patch_size sides must be positive, got {patch_size!r}")
    return tuple(int(p) for p in patch)  # type: ignore[return-value]


def crop_views(
    image: np.ndarray,
    label: np.ndarray | None,
    patch: tuple[int, int, int],
    rng: np.random.Generator,
    positions: int = 1,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A uniformly random ``patch`` window, zero-padding sides shorter than the patch.

    Args:
        image: (X, Y, Z); padded with 0.
        label: (X, Y, Z) or None; padded with 0 (background), cropped identically.
        patch: Patch (X, Y, Z).
        rng: Source of the crop position.
        positions: Along each axis, the window takes at least this many positions relative to
            the volume (:func:`window_start`); 1 keeps the authors' crop, which centres a
            short side in the patch.

    Returns:
        Views of the window (copies only where padding was needed).
    """
    if positions > 1:
        starts = [
            window_start(s, p, positions, rng) for s, p in zip(image.shape, patch, strict=True)
        ]
        return window_views(image, starts, patch), (
            None if label is None else window_views(label, starts, patch)
        )
    short = [max(p - s, 0) for p, s in zip(patch, image.shape, strict=True)]
    if any(short):
        # Split the padding so the volume stays near the centre of the patch.
        pad = [(d // 2, d - d // 2) for d in short]
        image = np.pad(image, pad, mode="constant", constant_values=0)
        if label is not None:
            label = np.pad(label, pad, mode="constant", constant_values=0)
    starts = [int(rng.integers(0, s - p + 1)) for s, p in zip(image.shape, patch, strict=True)]
    window = tuple(slice(a, a + p) for a, p in zip(starts, patch, strict=True))
    return image[window], None if label is None else label[window]


def window_start(size: int, patch: int, positions: int, rng: np.random.Generator) -> int:
    """A random window start along one axis, in volume voxels (may lie outside the volume).

    The window either lies inside the volume or holds all of it: starts from
    ``min(0, size - patch)`` to ``max(0, size - patch)``. Where that gives fewer than
    ``positions`` starts, the range grows by the difference, half on each side, so that the
    window overhangs the volume (zeros) and cuts a few voxels off its ends, by at most a
    quarter of the patch.

    Why: a network that halves its grid 4 times is not invariant to shifts of less than 16
    voxels. The LA scans all have 44 slices at 1.25 mm, fewer than the patch's 48, so without
    this every training patch held them at one position, and a user's scan of another extent
    (any crop) met a network that had never seen its slices at that position.
    """
    low, high = min(0, size - patch), max(0, size - patch)
    extra = max(0, positions - (high - low + 1))
    # Overhang at most a quarter of the patch, so a window always holds mostly volume.
    low = max(low - extra // 2, low - patch // 4)
    high = min(high + extra - extra // 2, high + patch // 4)
    return int(rng.integers(low, high + 1))


def window_views(array: np.ndarray, starts: Sequence[int], patch: Sequence[int]) -> np.ndarray:
    """The ``patch`` window of ``array`` at ``starts`` (volume voxels), 0 outside the array.

    A view where the window lies inside the array, else a zero-filled copy.
    """
    inside = tuple(
        slice(max(a, 0), min(a + p, n)) for a, p, n in zip(starts, patch, array.shape, strict=True)
    )
    if all(a >= 0 and a + p <= n for a, p, n in zip(starts, patch, array.shape, strict=True)):
        return array[inside]
    out = np.zeros(tuple(patch), dtype=array.dtype)
    into = tuple(
        slice(piece.start - a, piece.stop - a) for piece, a in zip(inside, starts, strict=True)
    )
    out[into] = array[inside]
    return out


class _Stream:
    """Endless draws from shuffled passes over range(n), reshuffled after each pass."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.n = n
        self.rng = rng
        self.perm: list[int] = rng.permutation(n).tolist() if n else []
        self.pos = 0

    def take(self, count: int) -> list[int]:
        out = []
        for _ in range(count):
            if self.pos == self.n:
                self.perm = self.rng.permutation(self.n).tolist()
                self.pos = 0
            out.append(self.perm[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "perm": list(self.perm),
            "pos": self.pos,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any], what: str) -> None:
        perm = [int(i) for i in state["perm"]]
        pos = int(state["pos"])
        if int(state["n"]) != self.n or sorted(perm) != list(range(self.n)):
            raise ValueError(
                f"saved {what} stream covers {state['n']} cases, this one {self.n}; "
                "resume with the same cases"
            )
        if not 0 <= pos <= self.n:
            raise ValueError(f"saved {what} position {pos} is outside 0..{self.n}")
        self.rng.bit_generator.state = state["rng"]
        self.perm, self.pos = perm, pos


class TwoStreamSampler:
    """Draws case indices for batches of labeled and unlabeled cases.

    Each stream walks its own shuffled permutation and reshuffles at the end of each pass,
    with its own random generator (both derived from ``rng``), so one stream's draws never
    depend on the other's size or batch share.

    Args:
        num_labeled: Number of labeled cases (>= 1).
        num_unlabeled: Number of unlabeled cases (>= 0).
        labeled_per_batch: Labeled indices per batch (>= 1).
        unlabeled_per_batch: Unlabeled indices per batch (>= 0; 0 = fully supervised).
        rng: Seeds the two streams.
    """

    def __init__(
        self,
        num_labeled: int,
        num_unlabeled: int,
        labeled_per_batch: int,
        unlabeled_per_batch: int,
        rng: np.random.Generator,
    ) -> None:
        num_labeled = check_int("num_labeled", num_labeled, 0)
        num_unlabeled = check_int("num_unlabeled", num_unlabeled, 0)
        self.labeled_per_batch = check_int("labeled_per_batch", labeled_per_batch, 1)
        self.unlabeled_per_batch = check_int("unlabeled_per_batch", unlabeled_per_batch, 0)
        if num_labeled == 0:
            raise ValueError("no labeled cases: semi-supervised training needs at least one")
        if self.unlabeled_per_batch > 0 and num_unlabeled == 0:
            raise ValueError(
                f"unlabeled_per_batch is {unlabeled_per_batch} but there are no unlabeled "
                "cases; add unlabeled cases or make every patch labeled "
                "(labeled batch size = batch size)"
            )
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy Generator, got {type(rng).__name__}")
        seeds = rng.integers(0, 2**63, size=2)
        self._labeled = _Stream(num_labeled, np.random.default_rng(int(seeds[0])))
        self._unlabeled = _Stream(num_unlabeled, np.random.default_rng(int(seeds[1])))

    def next_batch(self) -> tuple[list[int], list[int]]:
        """The next (labeled indices, unlabeled indices)."""
        return (
            self._labeled.take(self.labeled_per_batch),
            self._unlabeled.take(self.unlabeled_per_batch),
        )

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state: permutations, positions and generator states."""
        return {"labeled": self._labeled.state_dict(), "unlabeled": self._unlabeled.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the case counts must be the same.

        Raises:
            ValueError: The state does not fit this sampler.
        """
        try:
            self._labeled.load_state_dict(state["labeled"], "labeled")
            self._unlabeled.load_state_dict(state["unlabeled"], "unlabeled")
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a TwoStreamSampler state: missing or bad {exc}") from exc


class PatchBatcher:
    """Makes training batches of augmented patches: labeled first, then unlabeled.

    Args:
        labeled: Cases with labels.
        unlabeled: Cases whose labels are ignored (may be empty).
        patch_size: Patch (X, Y, Z).
        labeled_per_batch: Labeled patches per batch.
        unlabeled_per_batch: Unlabeled patches per batch.
        seed: Seeds the case order and the augmentation: an int, or several (e.g. (seed, rank)
            for one process of data-parallel training, whose trainer then replaces the case
            order with the order all processes share).
        augment: Random in-plane rotation/flip before cropping.
        intensity: Z-score each patch over a random region of its volume, scale and shift it,
            sometimes blank what lies outside the region (:mod:`fbanet.data.intensity`); None
            keeps the intensities as loaded.
        window_positions: Each axis's window takes at least this many positions relative
            to its volume (:func:`window_start`); 1 is the authors' crop.
    """

    def __init__(
        self,
        labeled: Sequence[Case],
        unlabeled: Sequence[Case],
        patch_size: Sequence[int],
        labeled_per_batch: int,
        unlabeled_per_batch: int,
        seed: int | Sequence[int],
        augment: bool = True,
        intensity: RegionNormalization | None = None,
        window_positions: int = 1,
    ) -> None:
        self.patch_size = _check_patch(patch_size)
        for case in labeled:
            if case.label is None:
                raise ValueError(f"labeled case {case.name!r} has no label")
        for case in (*labeled, *unlabeled):
            _check_pair(case.image, case.label)
        self.labeled = list(labeled)
        self.unlabeled = list(unlabeled)
        self.augment = bool(augment)
        self.window_positions = check_int("window_positions", window_positions)
        entropy = (
            [check_int("seed", s, 0) for s in seed]
            if isinstance(seed, Sequence)
            else check_int("seed", seed, 0)
        )
        # A third child for the intensities leaves the first two streams as they were.
        sampler_seq, augment_seq, intensity_seq = np.random.SeedSequence(entropy).spawn(3)
        self.sampler = TwoStreamSampler(
            len(self.labeled),
            len(self.unlabeled),
            labeled_per_batch,
            unlabeled_per_batch,
            np.random.default_rng(sampler_seq),
        )
        self._rng = np.random.default_rng(augment_seq)
        self.intensity = intensity
        self._intensity_rng = np.random.default_rng(intensity_seq)
        self._focus: dict[int, IndexBox | None] = {}

    def _focus_box(self, case: Case) -> IndexBox | None:
        # Keyed by identity: the label's box is found once per case, not once per patch.
        key = id(case)
        if key not in self._focus:
            self._focus[key] = None if case.label is None else foreground_box(case.label)
        return self._focus[key]

    def _patch(self, case: Case, with_label: bool) -> tuple[np.ndarray, np.ndarray | None]:
        image, label = case.image, case.label if with_label else None
        if self.intensity is not None:
            # Before the crop, so that padding stays 0, as inference pads its windows.
            image = region_normalized(
                image, self._focus_box(case), self.intensity, self._intensity_rng
            )
        if self.augment:
            image, label = rot_flip_views(image, label, self._rng)
        return crop_views(image, label, self.patch_size, self._rng, self.window_positions)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        """The next batch.

        Returns:
            images: float32 (B, 1, X, Y, Z), the L labeled patches first.
            labels: int64 (L, X, Y, Z), class indices of the labeled patches.
        """
        lab_idx, unl_idx = self.sampler.next_batch()
        count = len(lab_idx) + len(unl_idx)
        images = np.empty((count, 1, *self.patch_size), dtype=np.float32)
        labels = np.empty((len(lab_idx), *self.patch_size), dtype=np.int64)
        for row, i in enumerate(lab_idx):
            image, label = self._patch(self.labeled[i], with_label=True)
            assert label is not None  # labeled cases are checked in __init__
            images[row, 0] = image
            labels[row] = label
        for row, i in enumerate(unl_idx, start=len(lab_idx)):
            images[row, 0] = self._patch(self.unlabeled[i], with_label=False)[0]
        return images, labels

    def __iter__(self) -> PatchBatcher:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        return self.next()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state of the case order and the augmentation generator."""
        return {
            "sampler": self.sampler.state_dict(),
            "rng": self._rng.bit_generator.state,
            "intensity_rng": self._intensity_rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` taken from a batcher over the same cases.

        Raises:
            ValueError: The state does not fit this batcher.
        """
        if not isinstance(state, dict) or not {"sampler", "rng"} <= set(state):
            raise ValueError("not a PatchBatcher state: needs keys 'sampler' and 'rng'")
        self.sampler.load_state_dict(state["sampler"])
        self._rng.bit_generator.state = state["rng"]
        # Checkpoints of fbanet 0.2 have no intensity stream; it then goes on from its seed.
        if "intensity_rng" in state:
            self._intensity_rng.bit_generator.state = state["intensity_rng"]
