"""Tests for fbanet.io.segments: segment names, colours and terminology codes."""

from __future__ import annotations

import pytest
from slicerio.segmentation import (
    terminology_entry_from_string,
    terminology_entry_to_string,
)

from fbanet.io.segments import (
    LEFT_ATRIUM,
    Code,
    SegmentInfo,
    Terminology,
    default_color,
    segments_from_model,
)

LA_COLOR = (0.85, 0.4, 0.35)
LA_TERMINOLOGY = (
    "Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure"
    "~SCT^82471001^Left atrium~^^~Anatomic codes - DICOM master list~^^~^^"
)


def test_terminology_string_matches_slicer_format() -> None:
    assert LEFT_ATRIUM.to_string() == LA_TERMINOLOGY
    assert terminology_entry_to_string(LEFT_ATRIUM.to_slicerio()) == LA_TERMINOLOGY
    parsed = terminology_entry_from_string(LA_TERMINOLOGY)
    assert Terminology.from_slicerio(parsed) == LEFT_ATRIUM


def test_segments_from_model() -> None:
    segments = segments_from_model(
        ("Background", "left ATRIUM", "Scar"),
        ((0, 0, 0), LA_COLOR, (0.1, 0.2, 0.3)),
    )
    assert [(s.label_value, s.name) for s in segments] == [(1, "left ATRIUM"), (2, "Scar")]
    assert segments[0].terminology == LEFT_ATRIUM
    assert segments[1].terminology is None
    scar = Terminology(
        Code("SCT", "49755003", "Morphologically Altered Structure"),
        Code("SCT", "12402003", "Scar"),
    )
    custom = segments_from_model(("bg", "Scar"), ((0, 0, 0), (1, 0, 0)), {"scar": scar})
    assert custom[0].terminology == scar
    with pytest.raises(ValueError, match="same length"):
        segments_from_model(("bg", "LA"), ((0, 0, 0),))


def test_segment_info_validation() -> None:
    with pytest.raises(ValueError, match="label_value"):
        SegmentInfo(0, "x", (0, 0, 0))
    with pytest.raises(ValueError, match=r"0-1.*255"):
        SegmentInfo(1, "x", (255, 0, 0))
    with pytest.raises(ValueError, match="must not contain"):
        Code("SCT", "1", "a~b")


def test_default_colors_cycle_through_the_palette() -> None:
    colors = [default_color(v) for v in range(1, 10)]
    assert all(0.0 <= c <= 1.0 for rgb in colors for c in rgb)
    assert len(set(colors[:8])) == 8 and colors[8] == colors[0]
