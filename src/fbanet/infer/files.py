"""Segmenting scans on disk: reading, output naming, writing every output atomically."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from fbanet.data.cases import align_label, has_geometry
from fbanet.data.preprocess import IndexBox, physical_roi, voxel_roi
from fbanet.infer.evaluation import LabeledVolume
from fbanet.infer.segmenter import Progress, SegmentationResult, Segmenter
from fbanet.io.atomic import check_output_folder, staged_writes
from fbanet.io.preview import save_preview
from fbanet.io.segmentation import (
    SEG_NRRD_EXTENSION,
    SUPPORTED_EXTENSIONS,
    write_scalar_volume,
    write_segmentation,
)
from fbanet.io.volumes import (
    HDF5_EXTENSIONS,
    SITK_READ_EXTENSIONS,
    Volume,
    is_hdf5,
    read_volume,
    split_extension,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SegmentOutputs:
    """The files one segmentation wrote."""

    segmentation: Path
    probability: Path | None = None
    uncertainty: Path | None = None
    preview: Path | None = None
    seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class RegionOfInterest:
    """A box to segment: voxel indices (start inclusive, stop exclusive) or two mm corners."""

    start: tuple[float, float, float]
    stop: tuple[float, float, float]
    physical: bool = False

    def box(self, volume: Volume) -> IndexBox:
        """The voxel box of this region in ``volume``."""
        if self.physical:
            return physical_roi(volume, self.start, self.stop)
        return voxel_roi(volume, [int(v) for v in self.start], [int(v) for v in self.stop])


def read_scan(path: str | Path, h5_spacing: Sequence[float] | None = None) -> tuple[Volume, bool]:
    """Read a scan; returns it and whether it is already normalized (the LA HDF5 layout)."""
    path = Path(path)
    return read_volume(path, h5_spacing=h5_spacing), is_hdf5(path)


def output_paths(
    inputs: Sequence[Path], out: Path, extension: str = SEG_NRRD_EXTENSION
) -> list[Path]:
    """Where each input's segmentation goes.

    One input and ``out`` with a supported extension: that file. Otherwise ``out`` is a
    folder and each input gives ``<name><extension>`` in it.

    Raises:
        ValueError: Unsupported extension, or two inputs with the same name.
    """
    extension = extension if extension.startswith(".") else f".{extension}"  # nii -> .nii
    if extension not in SUPPORTED_EXTENSIONS:
        raise ValueError(
            f"output format {extension!r} is not one of {sorted(SUPPORTED_EXTENSIONS)}"
        )
    _, out_ext = split_extension(out)
    if out_ext and out_ext in SUPPORTED_EXTENSIONS:
        if len(inputs) != 1:
            raise ValueError(
                f"{len(inputs)} inputs need an output folder, not the file {str(out)!r}"
            )
        return [out]
    if out_ext and not out.is_dir():
        raise ValueError(
            f"cannot write segmentations to {str(out)!r}: use one of "
            f"{sorted(SUPPORTED_EXTENSIONS)} for a file, or a folder"
        )
    names = [split_extension(p)[0] for p in inputs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"inputs share the names {duplicates}; segment them into separate folders")
    return [out / f"{name}{extension}" for name in names]


def check_inputs(inputs: Sequence[Path], outputs: Sequence[Path] = ()) -> None:
    """Check every input and output location before any work (the model is not loaded yet).

    Raises:
        FileNotFoundError: An input does not exist (all missing ones are named).
        ValueError: An input has an extension no reader supports.
        NotADirectoryError: An output's folder is a file.
    """
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(
            f"input{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"{'do' if len(missing) > 1 else 'does'} not exist; check the path"
        )
    for path in inputs:
        ext = split_extension(path)[1]
        if Path(path).is_file() and ext not in (*SITK_READ_EXTENSIONS, *HDF5_EXTENSIONS):
            raise ValueError(
                f"{path} has an unsupported extension {ext!r}; give NRRD, NIfTI, MHA, HDF5 "
                "or a DICOM folder"
            )
    for path in outputs:
        check_output_folder(Path(path))


def _sibling(path: Path, suffix: str) -> Path:
    name = path.name
    stem = (
        name[: -len(SEG_NRRD_EXTENSION)]
        if name.endswith(SEG_NRRD_EXTENSION)
        else split_extension(path)[0]
    )
    return path.with_name(f"{stem}{suffix}")


def sibling_outputs(output_path: Path, probability: bool, uncertainty: bool) -> list[Path]:
    """The map files :func:`segment_file` writes next to ``output_path`` when asked to."""
    return [
        _sibling(output_path, suffix)
        for suffix, wanted in (
            ("-probability.nrrd", probability),
            ("-uncertainty.nrrd", uncertainty),
        )
        if wanted
    ]


def segment_file(
    segmenter: Segmenter,
    image_path: str | Path,
    output_path: str | Path,
    *,
    roi: RegionOfInterest | None = None,
    probability: bool = False,
    uncertainty: bool = False,
    preview: Path | None = None,
    h5_spacing: Sequence[float] | None = None,
    progress: Progress | None = None,
) -> SegmentOutputs:
    """Segment one scan file and write the results next to ``output_path``.

    Writes the segmentation (``.seg.nrrd`` with named, colored segments, or a labelmap),
    optionally ``<name>-probability.nrrd``, ``<name>-uncertainty.nrrd`` and a PNG preview.
    The files appear together once all are complete (:func:`fbanet.io.atomic.staged_writes`):
    nothing is written when the input is bad, and a failed write (a full disk: "no space
    left on ...") leaves neither temporary nor partial files.
    """
    output_path = Path(output_path)
    check_output_folder(output_path)
    if preview is not None:
        check_output_folder(Path(preview))
    volume, normalized = read_scan(image_path, h5_spacing)
    box = roi.box(volume) if roi is not None else None
    result = segmenter.segment(
        volume, box, normalized=normalized, probability=probability,
        uncertainty=uncertainty, progress=progress,
    )  # fmt: skip
    output_path.parent.mkdir(parents=True, exist_ok=True)
    if preview is not None:
        Path(preview).parent.mkdir(parents=True, exist_ok=True)
    with staged_writes():
        return _write_outputs(
            segmenter, result, volume, output_path, preview, Path(image_path).name
        )


def _write_outputs(
    segmenter: Segmenter,
    result: SegmentationResult,
    volume: Volume,
    output_path: Path,
    preview: Path | None,
    title: str,
) -> SegmentOutputs:
    segments = segmenter.segments
    write_segmentation(result.labelmap, output_path, segments)
    outputs = SegmentOutputs(output_path, seconds=result.seconds)
    if result.probability is not None:
        path = _sibling(output_path, "-probability.nrrd")
        write_scalar_volume(result.probability, path)
        outputs = dataclasses.replace(outputs, probability=path)
    if result.uncertainty is not None:
        path = _sibling(output_path, "-uncertainty.nrrd")
        write_scalar_volume(result.uncertainty, path)
        outputs = dataclasses.replace(outputs, uncertainty=path)
    if preview is not None:
        colors = {s.label_value: s.color for s in segments}
        save_preview(volume, result.labelmap, preview, colors=colors, title=title)
        outputs = dataclasses.replace(outputs, preview=preview)
    return outputs


def read_labeled(
    image: Path, label: Path | None, h5_spacing: Sequence[float] | None, name: str
) -> LabeledVolume:
    """A scan and its reference labelmap, the label brought onto the scan's grid.

    HDF5 files hold both (``image``, ``label``); otherwise the label is aligned with the scan
    as training aligns it (:func:`fbanet.data.cases.align_label`): resampled (nearest
    neighbour) when it lies on another grid that overlaps the scan, refused when it does not.
    """
    image, label = Path(image), None if label is None else Path(label)
    volume, normalized = read_scan(image, h5_spacing)
    if label is None:
        if not is_hdf5(image):
            raise ValueError(f"case {name!r} has no label file; labeled cases need one")
        label = image
    reference = read_volume(label, dataset="label", h5_spacing=h5_spacing)
    known = has_geometry(image, "image") and has_geometry(label, "label")
    aligned = align_label(volume, reference, image, label, known)
    return LabeledVolume(name, volume, aligned, normalized)
