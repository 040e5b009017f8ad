"""Which cases a training run uses: JSON manifests and HDF5 case lists.

A :class:`DatasetSpec` names the labeled, unlabeled and validation cases on disk
(:class:`CaseRef`); :func:`fbanet.data.cases.load_cases` reads them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fbanet.config import check_int
from fbanet.io.volumes import is_hdf5, split_extension

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class CaseRef:
    """Where a case lives on disk.

    Attributes:
        image: Image file or DICOM folder.
        label: Label file, or None (none, or inside an HDF5 image).
        name: Case name.
    """

    image: Path
    label: Path | None
    name: str


@dataclass(frozen=True)
class DatasetSpec:
    """The cases of a training run.

    Attributes:
        labeled: Cases with labels, used for supervision.
        unlabeled: Cases whose labels (if any) are ignored.
        validation: Labeled cases held out to measure progress.
    """

    labeled: tuple[CaseRef, ...]
    unlabeled: tuple[CaseRef, ...]
    validation: tuple[CaseRef, ...]


_MANIFEST_KEYS = ("labeled", "unlabeled", "validation")


def _resolve(base: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a path string, got {value!r}")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise FileNotFoundError(f"{where}: {path} does not exist")
    return path


def _manifest_entry(base: Path, entry: Any, where: str, needs_label: bool) -> CaseRef:
    if isinstance(entry, str):
        entry = {"image": entry}
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a path or an object with 'image', got {entry!r}")
    unknown = sorted(set(entry) - {"image", "label", "name"})
    if unknown or "image" not in entry:
        raise ValueError(
            f"{where}: entry {entry!r} needs an 'image' key (optional 'label', 'name'); "
            f"unknown keys: {unknown}"
        )
    image = _resolve(base, entry["image"], where)
    label = _resolve(base, entry["label"], where) if entry.get("label") is not None else None
    if needs_label and label is None and not is_hdf5(image):
        raise ValueError(
            f"{where}: {image} has no 'label'; labeled and validation entries need one "
            "(or an HDF5 image with a 'label' dataset)"
        )
    name = entry.get("name", split_extension(image)[0])
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    return CaseRef(image, label, name)


def read_manifest(path: PathLike) -> DatasetSpec:
    """Read a JSON manifest of labeled, unlabeled and validation cases.

    The file holds ``{"labeled": [...], "unlabeled": [...], "validation": [...]}``; each
    entry is a path string or ``{"image": ..., "label": ..., "name": ...}``. Relative
    paths resolve against the manifest's folder. ``labeled`` is required and non-empty;
    the others default to empty. HDF5 images may omit ``label`` (read from the file).

    Raises:
        FileNotFoundError: The manifest or a file it names does not exist.
        ValueError: Invalid JSON, unknown or missing keys, bad entries, a case listed twice.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"manifest {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"manifest {path} must hold a JSON object with keys {_MANIFEST_KEYS}")
    unknown = sorted(set(data) - set(_MANIFEST_KEYS))
    if unknown or "labeled" not in data:
        raise ValueError(
            f"manifest {path}: needs key 'labeled' (optional 'unlabeled', 'validation'); "
            f"unknown keys: {unknown}"
        )
    sets: dict[str, tuple[CaseRef, ...]] = {}
    for key in _MANIFEST_KEYS:
        entries = data.get(key, [])
        if not isinstance(entries, list):
            raise ValueError(f"manifest {path}: {key!r} must be a list, got {entries!r}")
        sets[key] = tuple(
            _manifest_entry(path.parent, e, f"manifest {path}, {key}[{i}]", key != "unlabeled")
            for i, e in enumerate(entries)
        )
    if not sets["labeled"]:
        raise ValueError(f"manifest {path}: 'labeled' is empty; at least one case is needed")
    seen: dict[Path, str] = {}
    for key, refs in sets.items():
        for ref in refs:
            resolved = ref.image.resolve()
            if resolved in seen:
                raise ValueError(
                    f"manifest {path}: {ref.image} is listed twice ({seen[resolved]}, {key})"
                )
            seen[resolved] = key
    return DatasetSpec(sets["labeled"], sets["unlabeled"], sets["validation"])


def spec_from_h5_list(
    folder: PathLike, list_file: PathLike, labeled: int, validation: int
) -> DatasetSpec:
    """Split a list of HDF5 case names into labeled, unlabeled and validation cases.

    The first ``labeled`` names are labeled, the last ``validation`` names are validation,
    the rest unlabeled. Each name maps to ``folder/<name>.h5`` (labels inside the files).

    Raises:
        ValueError: Counts do not fit the list, or listed files are missing.
    """
    folder, list_file = Path(folder), Path(list_file)
    lines = list_file.read_text(encoding="utf-8").splitlines()
    names = [ln.strip().removesuffix(".h5") for ln in lines if ln.strip()]
    check_int("labeled", labeled, 1)
    check_int("validation", validation, 0)
    if labeled < 1 or validation < 0 or labeled + validation > len(names):
        raise ValueError(
            f"cannot take {labeled} labeled and {validation} validation cases from the "
            f"{len(names)} names of {list_file}; need labeled >= 1 and their sum <= {len(names)}"
        )
    refs = [CaseRef(folder / f"{n}.h5", None, n) for n in names]
    missing = [str(r.image) for r in refs if not r.image.is_file()]
    if missing:
        raise ValueError(
            f"{len(missing)} case(s) of {list_file} missing in {folder}, e.g. {missing[:3]}"
        )
    cut = len(refs) - validation
    return DatasetSpec(tuple(refs[:labeled]), tuple(refs[labeled:cut]), tuple(refs[cut:]))
