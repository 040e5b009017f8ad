"""Segmentation output: 3D Slicer ``.seg.nrrd`` files and plain labelmaps.

A ``.seg.nrrd`` is a NRRD labelmap whose header also names each segment, its colour, label
value and a DICOM-style terminology entry, so Slicer shows "Left atrium" with the right
colour and code instead of an anonymous "Segment_1". Writing and reading go through
``slicerio`` (the Slicer project's own reader/writer); geometry is stored as LPS
``space directions`` + ``space origin``, exactly the labelmap's SimpleITK geometry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fbanet.io import (
    WRITE_EXTENSIONS,
    Geometry,
    Volume,
    atomic_write,
    read_volume,
    split_extension,
    write_volume,
)

logger = logging.getLogger(__name__)

SEG_NRRD_EXTENSION = ".seg.nrrd"
SUPPORTED_EXTENSIONS: tuple[str, ...] = (SEG_NRRD_EXTENSION, *WRITE_EXTENSIONS)
# Slicer's own "DICOM master list" contexts: the Slicer General Anatomy list has no left atrium.
DICOM_CATEGORY_CONTEXT = "Segmentation category and type - DICOM master list"
DICOM_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
MAX_LABEL = 65535  # label values are stored as uint16 at most
# Distinct, saturated colours that stand out on a grayscale image; cycled by label value.
PALETTE: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.25, 0.25),
    (0.2, 0.9, 0.2),
    (0.3, 0.6, 1.0),
    (1.0, 0.9, 0.1),
    (1.0, 0.3, 1.0),
    (0.1, 0.95, 0.95),
    (1.0, 0.6, 0.1),
    (0.6, 0.4, 1.0),
)
_FORBIDDEN_CODE_CHARS = ("~", "^", "|", "\n", "\r")
# slicerio key -> Terminology attribute, for the optional codes.
_OPTIONAL_CODES = {
    "typeModifier": "type_modifier",
    "anatomicRegion": "anatomic_region",
    "anatomicRegionModifier": "anatomic_region_modifier",
}


def default_color(label_value: int) -> tuple[float, float, float]:
    """A display colour (RGB, 0-1) for a label value without a configured colour."""
    return PALETTE[(int(label_value) - 1) % len(PALETTE)]


@dataclass(frozen=True)
class Code:
    """One coded concept, as in DICOM: ``scheme^value^meaning`` in a Slicer terminology entry.

    Attributes:
        scheme: Coding scheme designator, e.g. ``"SCT"`` (SNOMED CT).
        value: Code value, e.g. ``"82471001"``.
        meaning: Human-readable code meaning, e.g. ``"Left atrium"``.
    """

    scheme: str
    value: str
    meaning: str

    def __post_init__(self) -> None:
        for field in ("scheme", "value", "meaning"):
            text = getattr(self, field)
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"code {field} must be a non-empty string, got {text!r}")
            # These characters delimit the terminology string; inside a code they corrupt it.
            if any(c in text for c in _FORBIDDEN_CODE_CHARS):
                raise ValueError(f"code {field} {text!r} must not contain any of ~ ^ | or newlines")

    def to_list(self) -> list[str]:
        """``[scheme, value, meaning]``, the form slicerio uses."""
        return [self.scheme, self.value, self.meaning]

    @classmethod
    def from_parts(cls, parts: Sequence[str] | None) -> Code | None:
        """A code from ``[scheme, value, meaning]``; None when absent or all empty."""
        if parts is None or not any(p.strip() for p in parts):
            return None
        if len(parts) != 3:
            raise ValueError(f"a code needs 3 parts (scheme, value, meaning), got {list(parts)!r}")
        return cls(*parts)


@dataclass(frozen=True)
class Terminology:
    """What a segment contains, as Slicer's ``TerminologyEntry`` tag encodes it.

    Attributes:
        category: Segmentation category, e.g. SCT 123037004 "Anatomical Structure".
        type: Segmentation type within the category, e.g. SCT 82471001 "Left atrium".
        type_modifier: Optional modifier of the type (e.g. laterality).
        anatomic_region: Optional anatomic region (for types that are not anatomy).
        anatomic_region_modifier: Optional modifier of the region.
        context_name: Name of the category/type terminology context.
        anatomic_context_name: Name of the anatomic region context.
    """

    category: Code
    type: Code
    type_modifier: Code | None = None
    anatomic_region: Code | None = None
    anatomic_region_modifier: Code | None = None
    context_name: str = DICOM_CATEGORY_CONTEXT
    anatomic_context_name: str = DICOM_ANATOMIC_CONTEXT

    def to_string(self) -> str:
        """The 7-part ``~``-separated string Slicer stores in the ``TerminologyEntry`` tag."""
        codes = [self.category, self.type, self.type_modifier]
        codes += [self.anatomic_region, self.anatomic_region_modifier]
        parts = ["^".join(c.to_list()) if c else "^^" for c in codes]
        return "~".join([self.context_name, *parts[:3], self.anatomic_context_name, *parts[3:]])

    def to_slicerio(self) -> dict[str, Any]:
        """The terminology as a slicerio dict (``category``, ``type``, ... as lists)."""
        entry: dict[str, Any] = {
            "contextName": self.context_name,
            "category": self.category.to_list(),
            "type": self.type.to_list(),
            "anatomicContextName": self.anatomic_context_name,
        }
        for key, attribute in _OPTIONAL_CODES.items():
            code = getattr(self, attribute)
            if code is not None:
                entry[key] = code.to_list()
        return entry

    @classmethod
    def from_slicerio(cls, entry: Mapping[str, Any]) -> Terminology:
        """A terminology from a slicerio dict, as ``slicerio.read_segmentation`` returns."""
        category, type_ = Code.from_parts(entry.get("category")), Code.from_parts(entry.get("type"))
        if category is None or type_ is None:
            raise ValueError(f"a terminology entry needs a category and a type, got {entry!r}")
        optional = {attr: Code.from_parts(entry.get(key)) for key, attr in _OPTIONAL_CODES.items()}
        return cls(
            category,
            type_,
            **optional,
            context_name=entry.get("contextName", DICOM_CATEGORY_CONTEXT),
            anatomic_context_name=entry.get("anatomicContextName", DICOM_ANATOMIC_CONTEXT),
        )


# Codes as Slicer's SegmentationCategoryTypeModifier-DICOM-Master.json lists them (category
# "Anatomical Structure", type "Left atrium", 3dSlicerLabel "left atrium").
LEFT_ATRIUM = Terminology(
    category=Code("SCT", "123037004", "Anatomical Structure"),
    type=Code("SCT", "82471001", "Left atrium"),
)


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of a labelmap.

    Attributes:
        label_value: Voxel value of the segment in the labelmap (1-65535).
        name: Display name.
        color: Display colour, RGB in 0-1.
        terminology: Standard coded meaning, or None.
    """

    label_value: int
    name: str
    color: tuple[float, float, float]
    terminology: Terminology | None = None

    def __post_init__(self) -> None:
        value = self.label_value
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"label_value must be an int, got {value!r}")
        if not 1 <= int(value) <= MAX_LABEL:
            raise ValueError(f"label_value must be in 1..{MAX_LABEL}, got {value!r}")
        object.__setattr__(self, "label_value", int(value))
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"segment name must be a non-empty string, got {self.name!r}")
        if "\n" in self.name or "\r" in self.name:
            raise ValueError(f"segment name must be one line, got {self.name!r}")
        try:
            color = tuple(float(c) for c in self.color)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"color must be 3 numbers, got {self.color!r}") from exc
        if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            raise ValueError(f"color must be 3 numbers in 0-1 (RGB), got {self.color!r}")
        object.__setattr__(self, "color", color)
        if self.terminology is not None and not isinstance(self.terminology, Terminology):
            raise TypeError(f"terminology must be a Terminology or None, got {self.terminology!r}")


def segments_from_model(
    class_names: Sequence[str],
    class_colors: Sequence[Sequence[float]],
    terminologies: Mapping[str, Terminology] | None = None,
) -> list[SegmentInfo]:
    """Segments for a model's foreground classes (label values 1..K-1).

    Args:
        class_names: One name per class, background first (``ModelConfig.class_names``).
        class_colors: One RGB (0-1) per class, background first.
        terminologies: Terminology per class name (matched case-insensitively); a class
            named "Left atrium" gets :data:`LEFT_ATRIUM` unless given here.

    Returns:
        One segment per foreground class.

    Raises:
        ValueError: Fewer than 2 classes, or names and colours of different lengths.
    """
    if len(class_names) != len(class_colors):
        raise ValueError(
            f"class_names ({len(class_names)}) and class_colors ({len(class_colors)}) must have "
            "the same length"
        )
    if len(class_names) < 2:
        raise ValueError(f"need background + at least one class, got {list(class_names)!r}")
    by_name = {k.strip().lower(): v for k, v in (terminologies or {}).items()}
    segments = []
    for label, (name, color) in enumerate(zip(class_names, class_colors, strict=True)):
        if label == 0:
            continue
        key = str(name).strip().lower()
        terminology = by_name.get(key, LEFT_ATRIUM if key == "left atrium" else None)
        segments.append(SegmentInfo(label, str(name), tuple(color), terminology))
    return segments


def _slicerio() -> Any:
    try:
        import slicerio
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "writing/reading .seg.nrrd needs the slicerio package: pip install slicerio"
        ) from exc
    return slicerio


def _is_seg_nrrd(path: Path) -> bool:
    return path.name.lower().endswith(SEG_NRRD_EXTENSION)


def _check_segments(segments: Sequence[SegmentInfo]) -> list[SegmentInfo]:
    segments = list(segments)
    for s in segments:
        if not isinstance(s, SegmentInfo):
            raise TypeError(f"segments must be SegmentInfo objects, got {s!r}")
    values = [s.label_value for s in segments]
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"segment label values must be unique; repeated: {duplicates}")
    return segments


def _label_array(labelmap: Volume, segments: Sequence[SegmentInfo]) -> np.ndarray:
    """The labelmap as the smallest unsigned integer array, after checking its values."""
    if not isinstance(labelmap, Volume):
        raise TypeError(f"labelmap must be a Volume, got {type(labelmap).__name__}")
    array = labelmap.array
    if array.ndim != 3:
        raise ValueError(f"labelmap must be 3D (X, Y, Z), got shape {array.shape}")
    if array.dtype.kind == "f":
        bad = array[~np.isfinite(array) | (array != np.round(array))]
        if bad.size:
            raise ValueError(
                f"labelmap must hold whole numbers (label values); found {bad.size} voxels "
                f"with values such as {np.unique(bad)[:5].tolist()}"
            )
    elif array.dtype.kind not in "biu":
        raise TypeError(f"labelmap must be an integer array, got dtype {array.dtype}")
    present = np.unique(array)
    allowed = {0, *(s.label_value for s in segments)}
    unexpected = [v.item() for v in present if v not in allowed]
    if unexpected:
        raise ValueError(
            f"labelmap has values {unexpected[:10]} that are neither 0 (background) nor a "
            f"segment's label value {sorted(allowed - {0})}"
        )
    dtype = np.uint8 if max(allowed) <= np.iinfo(np.uint8).max else np.uint16
    return np.ascontiguousarray(array, dtype=dtype)


def _ijk_to_lps(geometry: Geometry) -> np.ndarray:
    matrix = np.eye(4)
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    matrix[:3, :3] = direction * np.asarray(geometry.spacing)  # column i = axis i * spacing i
    matrix[:3, 3] = geometry.origin
    return matrix


def _geometry_from_ijk_to_lps(matrix: Any) -> Geometry:
    matrix = np.asarray(matrix, dtype=np.float64)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"the segmentation has a degenerate voxel-to-LPS matrix {matrix.tolist()}")
    direction = matrix[:3, :3] / spacing
    return Geometry(tuple(spacing), tuple(matrix[:3, 3]), tuple(direction.ravel()))


def _segment_dict(segment: SegmentInfo, shape: tuple[int, ...]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": f"Segment_{segment.label_value}",
        "name": segment.name,
        # 0 = chosen, not generated: Slicer then keeps our name and colour.
        "nameAutoGenerated": False,
        "color": [round(c, 6) for c in segment.color],
        "colorAutoGenerated": False,
        "labelValue": segment.label_value,
        "layer": 0,
        # The full extent: older Slicer versions cropped a layer to its first segment's extent.
        "extent": [v for n in shape for v in (0, n - 1)],
    }
    if segment.terminology is not None:
        entry["terminology"] = segment.terminology.to_slicerio()
    return entry


def write_segmentation(
    labelmap: Volume,
    path: str | os.PathLike[str],
    segments: Sequence[SegmentInfo],
    *,
    compress: bool = True,
) -> Path:
    """Write a labelmap as a Slicer segmentation or a plain labelmap file, atomically.

    Args:
        labelmap: Label values (X, Y, Z) with their geometry; values must be 0 or a
            segment's label value.
        path: ``.seg.nrrd`` for a Slicer segmentation (segment names, colours and
            terminology kept); ``.nrrd``, ``.nii``, ``.nii.gz`` or ``.mha`` for a plain
            labelmap (uint8, or uint16 for label values above 255).
        segments: The segments the labelmap may contain.
        compress: Compress the voxel data.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: Unsupported extension, repeated label values, a labelmap that is not 3D,
            not whole-numbered or holding values no segment has.
        TypeError: ``labelmap`` is not a Volume with a numeric array.
    """
    path = Path(path)
    seg_nrrd = _is_seg_nrrd(path)
    if not seg_nrrd and split_extension(path)[1] not in WRITE_EXTENSIONS:
        raise ValueError(
            f"cannot write a segmentation to {path}: use one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    segments = _check_segments(segments)
    labels = _label_array(labelmap, segments)
    if not seg_nrrd:
        return write_volume(Volume(labels, labelmap.geometry), path, compress=compress)

    slicerio = _slicerio()
    segmentation = {
        "voxels": labels,  # (X, Y, Z) = (i, j, k): written in Fortran order like Slicer
        "ijkToLPS": _ijk_to_lps(labelmap.geometry),
        "encoding": "gzip" if compress else "raw",
        "containedRepresentationNames": ["Binary labelmap", "Closed surface"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": [_segment_dict(s, labels.shape) for s in segments],
    }

    def write(tmp: Path) -> None:
        slicerio.write_segmentation(str(tmp), segmentation)

    atomic_write(path, write)
    logger.info("wrote segmentation %s (%d segments)", path, len(segments))
    return path


def _is_segmentation_header(path: Path) -> bool:
    """Whether a ``.nrrd`` file carries Slicer segment fields (a renamed .seg.nrrd)."""
    import nrrd

    try:
        header = nrrd.read_header(str(path))
    except (nrrd.NRRDError, OSError, UnicodeDecodeError):
        return False
    return any(key.startswith("Segment") and "_" in key for key in header)


def _segments_to_labelmap(segmentation: Mapping[str, Any], path: Path) -> tuple[np.ndarray, list]:
    """Collapse (possibly layered) slicerio segments into one labelmap and SegmentInfos."""
    slicerio = _slicerio()
    voxels = segmentation["voxels"]
    labels = np.zeros(voxels.shape[-3:], dtype=np.uint16)
    infos: list[SegmentInfo] = []
    used: set[int] = set()
    for index, seg in enumerate(segmentation.get("segments", [])):
        mask = slicerio.segment_mask(segmentation, seg)
        overlap = labels[mask] != 0
        if overlap.any():
            raise ValueError(
                f"segment {seg.get('name')!r} of {path} overlaps another segment in "
                f"{int(overlap.sum())} voxels; a single labelmap cannot hold overlapping segments"
            )
        # Segments in different layers may share a label value; renumber the later ones.
        value = int(seg.get("labelValue", 1))
        if value in used:
            value = max(used) + 1
        used.add(value)
        labels[mask] = value
        terminology = seg.get("terminology")
        infos.append(
            SegmentInfo(
                value,
                seg.get("name") or f"Segment_{index + 1}",
                tuple(seg.get("color") or default_color(value)),
                Terminology.from_slicerio(terminology) if terminology else None,
            )
        )
    dtype = np.uint8 if max(used, default=0) <= np.iinfo(np.uint8).max else np.uint16
    return labels.astype(dtype), infos


def read_segmentation(path: str | os.PathLike[str]) -> tuple[Volume, list[SegmentInfo]]:
    """Read a Slicer segmentation or a plain labelmap.

    Args:
        path: A ``.seg.nrrd`` (or any NRRD with Slicer segment fields), or a plain labelmap
            that :func:`fbanet.io.read_volume` reads; its segments are then named
            ``Segment_<value>`` with default colours and no terminology.

    Returns:
        The labelmap (X, Y, Z; uint8 or uint16) and its segments, by label value.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Unreadable file, overlapping segments, or a plain labelmap that is not
            whole-numbered and non-negative.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file; check the path")
    ext = split_extension(path)[1]
    if _is_seg_nrrd(path) or (ext == ".nrrd" and _is_segmentation_header(path)):
        slicerio = _slicerio()
        try:
            segmentation = slicerio.read_segmentation(str(path))
        except Exception as exc:  # slicerio raises OSError, KeyError, ValueError, NRRDError
            raise ValueError(f"cannot read {path} as a Slicer segmentation: {exc}") from exc
        labels, segments = _segments_to_labelmap(segmentation, path)
        geometry = _geometry_from_ijk_to_lps(segmentation["ijkToLPS"])
        return Volume(labels, geometry), sorted(segments, key=lambda s: s.label_value)

    volume = read_volume(path)
    array = volume.array
    if array.dtype.kind == "f" and not np.all(np.isfinite(array) & (array == np.round(array))):
        raise ValueError(f"{path} holds non-integer values; it is not a labelmap")
    if array.dtype.kind not in "biuf" or (array.size and array.min() < 0):
        raise ValueError(f"{path} must hold non-negative integer label values")
    values = [int(v) for v in np.unique(array) if v != 0]
    if values and values[-1] > MAX_LABEL:
        raise ValueError(f"{path} has label values above {MAX_LABEL}: {values[-5:]}")
    dtype = np.uint8 if max(values, default=0) <= np.iinfo(np.uint8).max else np.uint16
    segments = [SegmentInfo(v, f"Segment_{v}", default_color(v)) for v in values]
    return Volume(array.astype(dtype), volume.geometry), segments


def write_scalar_volume(
    volume: Volume, path: str | os.PathLike[str], *, compress: bool = True
) -> Path:
    """Write a probability or uncertainty map as float32, atomically.

    Args:
        volume: The map (X, Y, Z) with its geometry.
        path: ``.nrrd``, ``.nii``, ``.nii.gz`` or ``.mha``.
        compress: Compress the voxel data.

    Returns:
        ``path`` as a Path.
    """
    array = np.asarray(volume.array, dtype=np.float32)
    return write_volume(Volume(array, volume.geometry), path, compress=compress)
