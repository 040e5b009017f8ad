"""What a segment is: name, colour, label value and its standard terminology code.

The DICOM-style terminology entries (category, type, anatomic region) are what Slicer's
Segment Editor shows and what lets other tools recognize the structure; the default is the
left atrium (SNOMED CT 82471001). :mod:`fbanet.io.segmentation` writes them into files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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
        rgb = (float(color[0]), float(color[1]), float(color[2]))
        segments.append(SegmentInfo(label, str(name), rgb, terminology))
    return segments
