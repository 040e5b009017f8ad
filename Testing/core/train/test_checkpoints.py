"""Training checkpoints: round trip, atomic writes, and no code run when loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from builders import trained_looking_model

from fbanet.config import ModelConfig
from fbanet.train.checkpoints import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    save_checkpoint,
    state_dict_to_cpu,
)

TINY = ModelConfig(base_filters=4, patch_size=(16, 16, 16), projection_dim=8)


class _WritesMarker:
    """Unpickling this object would call ``open(marker, "w")``: code execution on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_pickled_objects_are_refused_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "code_was_executed"
    payload = tmp_path / "payload.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "a": _WritesMarker(marker)}, payload)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refuses to load it") as info:
        load_checkpoint(payload)
    assert not marker.exists()
    assert "weights_only" not in str(info.value)  # no advice to load it unsafely

    # The payload is live: an unsafe load would have run it (proves the test is meaningful).
    canary = tmp_path / "canary"
    live = tmp_path / "live.pt"
    torch.save({"a": _WritesMarker(canary)}, live)
    torch.load(live, weights_only=False)
    assert canary.exists()


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = trained_looking_model(TINY)
    state = {
        "iteration": 7,
        "model": state_dict_to_cpu(model.state_dict()),
        "best_dice": 0.5,
        "batcher": json.dumps({"a": [1, 2]}),
    }
    path = save_checkpoint(tmp_path / "checkpoints" / "last.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["format"] == CHECKPOINT_FORMAT
    assert loaded["iteration"] == 7 and loaded["best_dice"] == 0.5
    assert json.loads(loaded["batcher"]) == {"a": [1, 2]}
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded["model"][key], value, rtol=0, atol=0)


def test_checkpoint_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "checkpoints"
    path = save_checkpoint(folder / "last.pt", {"iteration": 1, "w": torch.arange(5.0)})
    before = path.read_bytes()
    real_save = torch.save

    def crash_mid_write(obj: object, f: object, *args: object, **kwargs: object) -> None:
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:  # type: ignore[arg-type]
            handle.truncate(100)  # a half-written file...
        raise OSError("disk full")  # ...and the writer dies

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"iteration": 2, "w": torch.zeros(5)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["iteration"] == 1
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt"]  # no temporary file left
