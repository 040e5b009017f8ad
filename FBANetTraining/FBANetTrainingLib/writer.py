"""Writing the dataset without blocking Slicer: voxels copied on the main thread, files written
by a worker thread.

The main thread does what needs the scene: it exports each label map (Slicer's segmentation
export, checked as before) and copies the voxels and the IJK-to-RAS matrix of each volume
(numpy, milliseconds). One worker thread writes the NRRD files from those copies and touches
nothing else, so Slicer stays responsive while gigabytes are written. The panel polls
:meth:`DatasetWriter.poll` from its timer (progress, Cancel); the job export and scripts call
:func:`exportDataset`, which drives the same writer to the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as waitFor
from pathlib import Path
from typing import Any

import numpy as np
import vtk
from vtk.util import numpy_support

from fbanet.protocol import JobState
from FBANetTrainingLib.dataset import (
    Dataset,
    ExportedCase,
    InputError,
    LabeledExample,
    checkedLabelmap,
    isScalarVolume,
    resolveExample,
    safeName,
    temporaryNodes,
)

logger = logging.getLogger(__name__)

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
# NRRD type names of the scalar types a volume may hold (numpy dtype kind + size).
NRRD_TYPES = {
    "i1": "int8", "u1": "uint8", "i2": "int16", "u2": "uint16", "i4": "int32",
    "u4": "uint32", "i8": "int64", "u8": "uint64", "f4": "float", "f8": "double",
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class VoxelCopy:
    """A volume's voxels (K, J, I), copied, and its IJK-to-RAS matrix: all a file needs."""

    array: np.ndarray
    ijkToRas: np.ndarray


def copyVoxels(volumeNode: Any) -> VoxelCopy:
    """Copy a volume node's voxels and geometry (its own grid, without parent transforms)."""
    image = volumeNode.GetImageData()
    dimensions = image.GetDimensions()
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    ijkToRas = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    return VoxelCopy(np.array(values.reshape(dimensions[::-1]), copy=True), ijkToRas)


def writeNrrd(voxels: VoxelCopy, path: Path) -> Path:
    """Write ``voxels`` as an uncompressed NRRD in LPS, as Slicer's volume storage node does.

    Touches only ``voxels`` and ``path``: safe on a worker thread.
    """
    array = voxels.array
    kind = f"{array.dtype.kind}{array.dtype.itemsize}"
    if kind not in NRRD_TYPES:
        raise OSError(f"cannot write voxels of type {array.dtype} as NRRD")
    ijkToLps = RAS_TO_LPS @ voxels.ijkToRas[:3, :4]

    def vector(values: np.ndarray) -> str:
        return "(" + ",".join(repr(float(v)) for v in values) + ")"

    depth, rows, columns = array.shape
    header = [
        "NRRD0004", f"type: {NRRD_TYPES[kind]}", "dimension: 3",
        "space: left-posterior-superior", f"sizes: {columns} {rows} {depth}",
        "space directions: " + " ".join(vector(ijkToLps[:, axis]) for axis in range(3)),
        "kinds: domain domain domain",
        *(["endian: little"] if array.dtype.itemsize > 1 else []),
        "encoding: raw", f"space origin: {vector(ijkToLps[:, 3])}",
    ]  # fmt: skip
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.write(("\n".join(header) + "\n\n").encode("ascii"))
        data.tofile(file)  # (raw bytes, in order; the GIL is released while writing)
    return path


def _writeFiles(files: Sequence[tuple[VoxelCopy, Path]]) -> None:
    for voxels, path in files:  # (the worker thread)
        writeNrrd(voxels, path)


def _entry(case: ExportedCase, folder: Path) -> dict[str, str]:
    entry = {"name": case.name, "image": case.image.relative_to(folder).as_posix()}
    if case.label is not None:
        entry["label"] = case.label.relative_to(folder).as_posix()
    return entry


def _checkCounts(examples: Sequence[LabeledExample], validationCases: int) -> None:
    if not examples:
        raise InputError("No labeled example: add at least one (volume, segmentation, segment) row")
    if not 0 <= validationCases < len(examples):
        raise InputError(
            f"{validationCases} validation case(s) cannot be held out of {len(examples)} labeled "
            "example(s): at least one must remain for training"
        )


class DatasetWriter:
    """Writes the labeled examples and unlabeled volumes as a dataset with ``manifest.json``,
    one case per step (see the module's docstring); polled like a worker job.

    The last ``validationCases`` labeled examples are held out for validation; unlabeled
    volumes that are also labeled are left out. Each label map is exported once, checked as
    it is written (a bad one writes nothing). States: RUNNING, then SUCCEEDED
    (:attr:`dataset`), FAILED (:attr:`error_message`: every bad example, one per line) or
    CANCELLED.

    Raises:
        InputError: No labeled example, or too many validation cases (nothing is written).
    """

    def __init__(
        self,
        scene: Any,
        examples: Sequence[LabeledExample],
        unlabeledVolumeIds: Sequence[str],
        folder: str | Path,
        validationCases: int = 0,
    ) -> None:
        _checkCounts(examples, validationCases)
        self.scene, self.folder = scene, Path(folder)
        self.manifest = self.folder / "manifest.json"
        self.validationCases = validationCases
        used = {e.volumeNodeId for e in examples}
        first = len(examples) + 1
        self._steps: list[tuple[int, LabeledExample | str]] = [
            *enumerate(examples, start=1),
            *((n, i) for n, i in enumerate(unlabeledVolumeIds, start=first) if i not in used),
        ]
        self.total, self.done = len(self._steps), 0
        self.state, self.error_message = JobState.RUNNING, ""
        self.failure: BaseException | None = None  # what wait() raises
        self.dataset: Dataset | None = None
        self._problems: list[str] = []
        self._cases: dict[bool, list[ExportedCase]] = {True: [], False: []}  # labeled?
        self._executor = ThreadPoolExecutor(1, "FBANetDatasetWriter")
        self._writing: tuple[Future[None], ExportedCase] | None = None

    @property
    def running(self) -> bool:
        return self.state.active

    def progressText(self) -> str:
        """One line for the panel."""
        return f"Writing the dataset: {self.done} of {self.total} volumes written..."

    def _snapshot(self, number: int, item: LabeledExample | str) -> tuple[ExportedCase, list]:
        """On the main thread: the case and the copies its files are written from."""
        if isinstance(item, LabeledExample):
            volume, _ = resolveExample(self.scene, item, number)
            name = f"{number:02d}_{safeName(volume.GetName())}"
            with temporaryNodes(self.scene):  # first: a bad label map writes nothing
                label = copyVoxels(checkedLabelmap(self.scene, item, number))
            case = ExportedCase(name, volume.GetID(), self.folder / "labeled" / f"{name}.nrrd",
                                self.folder / "labeled" / f"{name}_label.nrrd")  # fmt: skip
            assert case.label is not None
            return case, [(label, case.label), (copyVoxels(volume), case.image)]
        volume = self.scene.GetNodeByID(item)
        if not isScalarVolume(volume):  # (removed from the scene meanwhile)
            return ExportedCase("", item, Path()), []
        name = f"{number:02d}_{safeName(volume.GetName())}"
        case = ExportedCase(name, item, self.folder / "unlabeled" / f"{name}.nrrd")
        return case, [(copyVoxels(volume), case.image)]

    def poll(self, budget: float = 0.1) -> None:
        """Collect the written files and copy the next cases, for about ``budget`` seconds."""
        deadline = time.monotonic() + budget
        while self.running:
            if self._writing is not None:
                future, case = self._writing
                if not future.done():
                    return
                self._writing = None
                try:
                    future.result()
                except OSError as error:
                    return self._fail(error, f"Could not write the dataset: {error}")
                self._cases[case.label is not None].append(case)
                self.done += 1
            if not self._steps:
                return self._finish()
            if time.monotonic() > deadline:
                return
            number, item = self._steps.pop(0)
            try:
                case, files = self._snapshot(number, item)
            except InputError as error:  # every bad example is reported, at the end
                self._problems.append(str(error))
                self.done += 1
                continue
            except Exception as error:  # a volume Slicer cannot export
                logger.exception("FBANet: copying a case failed")
                return self._fail(error, f"Could not copy a volume of the scene: {error}")
            if not files:
                self.done += 1
                continue
            self._writing = (self._executor.submit(_writeFiles, files), case)

    def _finish(self) -> None:
        self._executor.shutdown(wait=False)
        if self._problems:
            message = "\n".join(self._problems)
            return self._fail(InputError(message), message)
        labeled, cut = self._cases[True], len(self._cases[True]) - self.validationCases
        dataset = Dataset(self.folder, self.manifest, tuple(labeled[:cut]),
                          tuple(self._cases[False]), tuple(labeled[cut:]))  # fmt: skip
        document = {key: [_entry(c, self.folder) for c in getattr(dataset, key)]
                    for key in ("labeled", "unlabeled", "validation")}  # fmt: skip
        self.folder.mkdir(parents=True, exist_ok=True)
        self.manifest.write_text(json.dumps(document, indent=2), encoding="utf-8")
        self.dataset, self.state = dataset, JobState.SUCCEEDED

    def _fail(self, failure: BaseException, message: str) -> None:
        self.cancel()
        self.state, self.error_message, self.failure = JobState.FAILED, message, failure

    def cancel(self) -> None:
        """Stop after the file being written (at most one: the GUI waits for it)."""
        self._steps = []
        if self._writing is not None:
            waitFor([self._writing[0]])
            self._writing = None
        self._executor.shutdown(wait=True)
        if self.running:
            self.state = JobState.CANCELLED

    def wait(self) -> Dataset:
        """Write everything now (scripts, the job export); returns the dataset.

        Raises:
            InputError: Bad examples (every one named, one per line).
            OSError: A file could not be written.
        """
        while self.running:
            if self._writing is not None:
                waitFor([self._writing[0]])
            self.poll(budget=1.0)
        if self.failure is not None:
            raise self.failure
        assert self.dataset is not None
        return self.dataset


def exportDataset(
    scene: Any,
    examples: Sequence[LabeledExample],
    unlabeledVolumeIds: Sequence[str],
    folder: str | Path,
    validationCases: int = 0,
) -> Dataset:
    """Write the dataset at once (the panel writes it in the background: :class:`DatasetWriter`).

    Raises:
        InputError: No labeled example, too many validation cases, or bad examples (every
            one named, one per line; the folder may hold some files then).
    """
    return DatasetWriter(scene, examples, unlabeledVolumeIds, folder, validationCases).wait()
