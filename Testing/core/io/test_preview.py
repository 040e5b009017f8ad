"""Tests for fbanet.io.preview: the three-slice PNG with segment outlines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from fbanet.io.preview import save_preview
from fbanet.io.volumes import Geometry, Volume

Image = pytest.importorskip("PIL.Image")

RED = (1.0, 0.0, 0.0)


def _scan(spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> tuple[Volume, Volume]:
    rng = np.random.default_rng(0)
    shape = (48, 40, 32)
    image = rng.normal(100.0, 20.0, shape).astype(np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[15:30, 12:26, 10:22] = 1
    image[labels == 1] += 80.0
    geometry = Geometry(spacing=spacing)
    return Volume(image, geometry), Volume(labels, geometry)


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.mode == "RGB"
        assert png.width > 0 and png.height > 0
        return np.asarray(png)


def _is_red(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 0)


def test_outline_drawn_in_segment_color(tmp_path: Path) -> None:
    image, labels = _scan()
    path = save_preview(image, labels, tmp_path / "p.png", colors={1: RED}, title="case 1")
    assert path == tmp_path / "p.png"
    rgb = _pixels(path)
    # Three panels each with a box outline: hundreds of red pixels.
    assert _is_red(rgb).sum() > 100
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]


def test_sequence_colors_indexed_by_label(tmp_path: Path) -> None:
    image, labels = _scan()
    path = save_preview(image, labels, tmp_path / "p.png", colors=[(0, 0, 0), RED])
    assert _is_red(_pixels(path)).sum() > 100


def test_no_labelmap_means_no_color(tmp_path: Path) -> None:
    image, _ = _scan()
    rgb = _pixels(save_preview(image, None, tmp_path / "p.png", title="no labels"))
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert rgb.max() > 0


def test_empty_labelmap_uses_volume_centre(tmp_path: Path) -> None:
    image, labels = _scan()
    labels.array[:] = 0
    rgb = _pixels(save_preview(image, labels, tmp_path / "p.png", colors={1: RED}))
    assert not _is_red(rgb).any()


def _outline_boxes(rgb: np.ndarray) -> list[tuple[int, int]]:
    """(width, height) of each red outline, left to right: one per panel."""
    components, count = ndimage.label(_is_red(rgb), structure=np.ones((3, 3)))
    boxes = sorted(ndimage.find_objects(components), key=lambda box: box[1].start)
    assert count == 3
    return [(box[1].stop - box[1].start, box[0].stop - box[0].start) for box in boxes]


def test_anisotropic_spacing_changes_aspect(tmp_path: Path) -> None:
    # The box label spans 15 (X) x 14 (Y) x 12 (Z) voxels.
    image, labels = _scan((1.0, 1.0, 1.0))
    save_preview(image, labels, tmp_path / "i.png", colors=[RED, RED])
    iso = _outline_boxes(_pixels(tmp_path / "i.png"))
    image, labels = _scan((1.0, 1.0, 3.0))
    save_preview(image, labels, tmp_path / "a.png", colors=[RED, RED])
    aniso = _outline_boxes(_pixels(tmp_path / "a.png"))
    # Outlines keep the box's millimetre proportions at each preview's own scale: 15 x 14 x 12
    # mm, and with 3 mm Z voxels 15 x 14 x 36 mm (coronal and sagittal 3x taller).
    for boxes, mm in ((iso, (15, 14, 12)), (aniso, (15, 14, 36))):
        px_per_mm = boxes[0][0] / mm[0]
        expected = [(mm[0], mm[1]), (mm[0], mm[2]), (mm[1], mm[2])]
        for (width, height), (w_mm, h_mm) in zip(boxes, expected, strict=True):
            assert width == pytest.approx(w_mm * px_per_mm, abs=2)
            assert height == pytest.approx(h_mm * px_per_mm, abs=2)


def test_rejects_bad_inputs(tmp_path: Path) -> None:
    image, labels = _scan()
    with pytest.raises(ValueError, match=r"\.png"):
        save_preview(image, labels, tmp_path / "p.jpg")
    small = Volume(labels.array[:10], labels.geometry)
    with pytest.raises(ValueError, match="shape"):
        save_preview(image, small, tmp_path / "p.png")
    with pytest.raises(ValueError, match="0-1"):
        save_preview(image, labels, tmp_path / "p.png", colors={1: (255, 0, 0)})
    assert list(tmp_path.iterdir()) == []


def test_constant_image_and_nan(tmp_path: Path) -> None:
    image = Volume(np.full((8, 8, 8), np.nan, dtype=np.float32), Geometry())
    path = save_preview(image, None, tmp_path / "p.png")
    assert _pixels(path).shape[2] == 3


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((64, 64, 48), (1.25, 1.25, 1.25)), ((200, 60, 40), (1.0, 1.0, 1.0)),
     ((400, 400, 120), (0.6, 0.6, 2.5))],
)  # fmt: skip
def test_previews_are_large_enough_to_inspect(
    tmp_path: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> None:
    # The demo's 64x64x48 phantom used to give a 216x104 thumbnail.
    array = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[tuple(slice(n // 4, 3 * n // 4) for n in shape)] = 1
    geometry = Geometry(spacing)
    path = save_preview(
        Volume(array, geometry), Volume(labels, geometry), tmp_path / "p.png", colors=[RED, RED]
    )
    with Image.open(path) as png:
        assert 800 <= png.width <= 1300 and png.height >= 60
        rgb = np.asarray(png.convert("RGB"))
    assert len(_outline_boxes(rgb)) == 3  # three outlined slices
