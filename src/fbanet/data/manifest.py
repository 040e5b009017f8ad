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


def _resolve(base: Path, value: Any, where: str, missing: list[tuple[str, Path]]) -> Path:
    """``value`` as a path against ``base``; a path that does not exist joins ``missing``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a path string, got {value!r}")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        missing.append((where, path))
    return path


def _manifest_entry(
    base: Path, entry: Any, where: str, needs_label: bool, missing: list[tuple[str, Path]]
) -> CaseRef:
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
    image = _resolve(base, entry["image"], where, missing)
    label = entry.get("label")
    label = _resolve(base, label, where, missing) if label is not None else None
    if needs_label and label is None and not is_hdf5(image):
        raise ValueError(
            f"{where}: {image} has no 'label'; labeled and validation entries need one "
            "(or an HDF5 image with a 'label' dataset)"
        )
    name = entry.get("name", split_extension(image)[0])
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    return CaseRef(image, label, name)


def _load_json(path: Path) -> Any:
    """The JSON document of a manifest, or an error naming it and what it is instead."""
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist; check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"manifest {path} is not a JSON manifest (it holds binary data, not text); give "
            'the JSON file that lists the cases, e.g. {"labeled": [{"image": "case1.nrrd", '
            '"label": "case1-label.nrrd"}]}'
        ) from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"manifest {path} is not a JSON manifest (invalid JSON: {exc})") from exc


def _read_sets(
    path: Path, data: dict[str, Any], missing: list[tuple[str, Path]]
) -> dict[str, tuple[CaseRef, ...]]:
    sets: dict[str, tuple[CaseRef, ...]] = {}
    for key in _MANIFEST_KEYS:
        entries = data.get(key, [])
        if not isinstance(entries, list):
            raise ValueError(f"manifest {path}: {key!r} must be a list, got {entries!r}")
        sets[key] = tuple(
            _manifest_entry(
                path.parent, e, f"manifest {path}, {key}[{i}]", key != "unlabeled", missing
            )
            for i, e in enumerate(entries)
        )
    return sets


def _check_missing(path: Path, missing: list[tuple[str, Path]]) -> None:
    """Name every file of the manifest that does not exist, not only the first."""
    if len(missing) == 1:
        raise FileNotFoundError(f"{missing[0][0]}: {missing[0][1]} does not exist")
    if missing:
        files = ", ".join(str(file) for _, file in missing)
        raise FileNotFoundError(
            f"manifest {path}: {len(missing)} files do not exist: {files} (relative paths are "
            "read from the manifest's folder)"
        )


def _check_unique(path: Path, sets: dict[str, tuple[CaseRef, ...]]) -> None:
    seen: dict[Path, str] = {}
    for key, refs in sets.items():
        for ref in refs:
            resolved = ref.image.resolve()
            if resolved in seen:
                raise ValueError(
                    f"manifest {path}: {ref.image} is listed twice ({seen[resolved]}, {key})"
                )
            seen[resolved] = key


def read_manifest(path: PathLike) -> DatasetSpec:
    """Read a JSON manifest of labeled, unlabeled and validation cases.

    The file holds ``{"labeled": [...], "unlabeled": [...], "validation": [...]}``; each
    entry is a path string or ``{"image": ..., "label": ..., "name": ...}``. Relative
    paths resolve against the manifest's folder. ``labeled`` is required and non-empty;
    the others default to empty. HDF5 images may omit ``label`` (read from the file).

    Raises:
        FileNotFoundError: The manifest, or files it names (all of them named), do not exist.
        ValueError: Not JSON, unknown or missing keys, bad entries, a case listed twice.
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"manifest {path} must hold a JSON object with keys {_MANIFEST_KEYS}")
    unknown = sorted(set(data) - set(_MANIFEST_KEYS))
    if unknown or "labeled" not in data:
        raise ValueError(
            f"manifest {path}: needs key 'labeled' (optional 'unlabeled', 'validation'); "
            f"unknown keys: {unknown}"
        )
    missing: list[tuple[str, Path]] = []
    sets = _read_sets(path, data, missing)
    _check_missing(path, missing)
    if not sets["labeled"]:
        raise ValueError(f"manifest {path}: 'labeled' is empty; at least one case is needed")
    _check_unique(path, sets)
    return DatasetSpec(sets["labeled"], sets["unlabeled"], sets["validation"])


def read_scoring_manifest(path: PathLike) -> tuple[CaseRef, ...]:
    """The labeled cases a manifest offers for scoring (``fbanet evaluate``).

    Accepts a training manifest (its ``validation`` cases, else its ``labeled`` ones), an
    object with only ``validation`` (or only ``labeled``), or a plain list of
    ``{"image": ..., "label": ...}`` pairs.

    Raises:
        FileNotFoundError: The manifest, or files it names (all named), do not exist.
        ValueError: Not JSON, no labeled case, bad entries, a case listed twice.
    """
    path = Path(path)
    data = _load_json(path)
    if isinstance(data, list):
        data = {"validation": data}
    if not isinstance(data, dict) or set(data) - set(_MANIFEST_KEYS):
        raise ValueError(
            f"manifest {path} must hold a list of {{'image': ..., 'label': ...}} pairs or an "
            f"object with keys {_MANIFEST_KEYS}"
        )
    missing: list[tuple[str, Path]] = []
    sets = _read_sets(path, data, missing)
    _check_missing(path, missing)
    _check_unique(path, sets)
    refs = sets["validation"] or sets["labeled"]
    if not refs:
        raise ValueError(
            f"manifest {path} lists no labeled case to score; give 'validation' (or "
            "'labeled') entries with an 'image' and a 'label'"
        )
    return refs


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
