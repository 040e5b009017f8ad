"""Model files: round trips, half precision, safe and clear loading (and not checkpoints)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import trained_looking_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import fbanet.model.files as modelfile
from fbanet.config import IntensityNormalization, ModelConfig, TrainConfig, to_dict
from fbanet.model.files import (
    ModelMetadata,
    export_model_file,
    fill_absent_decoders,
    initialize_from_model_file,
    load_model_file,
    read_model_header,
    save_model_file,
)
from fbanet.model.network import FBANet
from fbanet.train.checkpoints import load_checkpoint, save_checkpoint

TINY = ModelConfig(base_filters=4, patch_size=(16, 16, 16), projection_dim=8)


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _input(seed: int = 1, config: ModelConfig = TINY) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, config.in_channels, *config.patch_size, generator=generator)


def _decoder1(model: FBANet, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().decode(x, (0,))[0]


def _metadata(config: ModelConfig = TINY) -> ModelMetadata:
    return ModelMetadata(
        model=config,
        spacing=(0.625, 0.625, 1.25),
        normalization=IntensityNormalization.AS_STORED,
        largest_component=False,
        iterations=1234,
        validation_dice=0.8765,
        num_labeled=8,
        num_unlabeled=64,
        training=to_dict(TrainConfig(iterations=1234, precision="fp32")),
        description="unit test model",
    )


@pytest.fixture
def saved(tmp_path: Path) -> tuple[FBANet, Path]:
    model = trained_looking_model(TINY)
    path = save_model_file(tmp_path / "model.safetensors", model, _metadata())
    return model, path


def test_round_trip_gives_identical_outputs(saved: tuple[FBANet, Path]) -> None:
    model, path = saved
    loaded, metadata = load_model_file(path)
    assert not loaded.training
    assert loaded.contrast is None
    x = _input()
    expected, actual = _decoder1(model, x), _decoder1(loaded, x)
    assert expected.abs().max() > 0.1  # the comparison is not between near-zero tensors
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    # Every decoder, not only the first, survives the round trip.
    with torch.no_grad():
        for a, b in zip(model.decode(x, (0, 1, 2)), loaded.decode(x, (0, 1, 2)), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert metadata == _metadata()


def test_half_file_is_half_the_size_and_close(tmp_path: Path) -> None:
    model = trained_looking_model(TINY)
    full = save_model_file(tmp_path / "full.safetensors", model, _metadata())
    half = save_model_file(tmp_path / "half.safetensors", model, _metadata(), half=True)
    ratio = half.stat().st_size / full.stat().st_size
    assert 0.45 < ratio < 0.6, ratio
    dtypes = {v.dtype for v in load_file(str(half)).values()}
    assert dtypes == {torch.float16, torch.int64}  # int64: batch-norm batch counters
    loaded, _ = load_model_file(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = _input()
    expected, actual = _decoder1(model, x), _decoder1(loaded, x)
    difference = (actual - expected).abs().max().item()
    assert 0 < difference < 1e-2
    # Same segmentation almost everywhere.
    agree = (actual.argmax(1) == expected.argmax(1)).float().mean().item()
    assert agree > 0.99


def test_projection_heads_are_not_stored(saved: tuple[FBANet, Path]) -> None:
    model, path = saved
    keys = set(load_file(str(path)))
    assert keys
    assert not [k for k in keys if k.startswith("contrast.")]
    expected = {k for k in model.state_dict() if not k.startswith("contrast.")}
    assert keys == expected


def test_metadata_round_trip(saved: tuple[FBANet, Path]) -> None:
    _, path = saved
    header = read_model_header(path)
    assert header == _metadata()
    assert header.spacing == (0.625, 0.625, 1.25)
    assert header.normalization is IntensityNormalization.AS_STORED
    assert header.validation_dice == pytest.approx(0.8765)
    assert header.model == TINY
    assert header.model.patch_size == (16, 16, 16)
    assert header.training is not None and header.training["iterations"] == 1234
    # JSON text -> object -> JSON text is stable.
    assert ModelMetadata.from_json(header.to_json()) == header
    # Unknown keys written by a newer version are ignored.
    document = json.loads(header.to_json())
    document["added_in_a_later_version"] = [1, 2]
    assert ModelMetadata.from_json(json.dumps(document)) == header


def test_metadata_defaults_round_trip(tmp_path: Path) -> None:
    metadata = ModelMetadata(model=TINY)
    path = save_model_file(tmp_path / "m.safetensors", trained_looking_model(TINY), metadata)
    header = read_model_header(path)
    assert header == metadata
    assert header.spacing is None and header.validation_dice is None


def test_header_is_read_without_loading_weights(
    saved: tuple[FBANet, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = saved
    # The weights part may even be missing: only the header is read.
    size = int.from_bytes(path.read_bytes()[:8], "little")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: 8 + size + 10])
    assert read_model_header(truncated) == _metadata()
    with pytest.raises(ValueError, match="damaged"):
        load_model_file(truncated)

    def no_weights(*args: object, **kwargs: object) -> None:
        raise AssertionError("read_model_header must not load weights")

    monkeypatch.setattr(modelfile, "load_file", no_weights)
    assert read_model_header(path).iterations == 1234


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "noise.safetensors"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="not an fbanet model file"):
        read_model_header(path)
    with pytest.raises(ValueError, match="not an fbanet model file"):
        load_model_file(path)
    with pytest.raises(ValueError, match="not a readable fbanet checkpoint"):
        load_checkpoint(path)


def test_small_header_of_garbage_is_refused(tmp_path: Path) -> None:
    # A plausible header length followed by bytes that are not JSON.
    path = tmp_path / "garbage.safetensors"
    path.write_bytes((16).to_bytes(8, "little") + b"\xff\xfe not json at all")
    with pytest.raises(ValueError, match="not an fbanet model file"):
        read_model_header(path)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="not an fbanet model file"):
        load_model_file(path)
    with pytest.raises(ValueError, match="not a readable fbanet checkpoint"):
        load_checkpoint(path)


def test_foreign_safetensors_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="no fbanet metadata") as info:
        load_model_file(path)
    assert "import-checkpoint" in str(info.value)  # the message says what to do instead
    plain = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(plain))
    with pytest.raises(ValueError, match="no fbanet metadata"):
        read_model_header(plain)


def _rewrite(
    path: Path,
    out: Path,
    edit_tensors: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    edit_header: Callable[[dict[str, str]], dict[str, str]] | None = None,
) -> Path:
    """Copy a model file, changing its tensors and/or header on the way."""
    with safe_open(str(path), framework="pt") as handle:
        header = dict(handle.metadata())
    tensors = load_file(str(path))
    if edit_tensors is not None:
        tensors = edit_tensors(tensors)
    if edit_header is not None:
        header = edit_header(header)
    save_file(tensors, str(out), metadata=header)
    return out


def test_tampered_weights_are_refused(saved: tuple[FBANet, Path], tmp_path: Path) -> None:
    _, path = saved
    dropped_key = "decoders.0.out_conv.weight"

    def drop(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        del tensors[dropped_key]
        return tensors

    dropped = _rewrite(path, tmp_path / "dropped.safetensors", edit_tensors=drop)
    with pytest.raises(ValueError, match="architecture") as info:
        load_model_file(dropped)
    assert dropped_key in str(info.value)

    def reshape(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tensors["encoder.stages.0.0.weight"] = torch.zeros(5, 1, 3, 3, 3)
        return tensors

    reshaped = _rewrite(path, tmp_path / "reshaped.safetensors", edit_tensors=reshape)
    with pytest.raises(ValueError, match="architecture"):
        load_model_file(reshaped)

    def extra(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tensors["contrast.0.fg_head.0.weight"] = torch.zeros(8, 512)
        return tensors

    with pytest.raises(ValueError, match="architecture"):
        load_model_file(_rewrite(path, tmp_path / "extra.safetensors", edit_tensors=extra))


def test_damaged_or_newer_metadata_is_refused(saved: tuple[FBANet, Path], tmp_path: Path) -> None:
    _, path = saved

    def newer(header: dict[str, str]) -> dict[str, str]:
        return {**header, "format_version": "999"}

    with pytest.raises(ValueError, match="newer fbanet"):
        read_model_header(_rewrite(path, tmp_path / "newer.safetensors", edit_header=newer))

    def damaged(header: dict[str, str]) -> dict[str, str]:
        return {**header, "fbanet": '{"model": {"base_filters": -1}}'}

    with pytest.raises(ValueError, match="damaged fbanet metadata"):
        read_model_header(_rewrite(path, tmp_path / "damaged.safetensors", edit_header=damaged))


def test_other_files_are_not_checkpoints(saved: tuple[FBANet, Path], tmp_path: Path) -> None:
    _, model_path = saved
    with pytest.raises(ValueError, match=r"not an? (readable )?fbanet (training )?checkpoint"):
        load_checkpoint(model_path)
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)  # readable, but not ours
    with pytest.raises(ValueError, match="not an fbanet training checkpoint"):
        load_checkpoint(plain)
    checkpoint = save_checkpoint(tmp_path / "last.pt", {"iteration": 3})
    with pytest.raises(ValueError, match="not an fbanet model file"):
        load_model_file(checkpoint)


def test_missing_files_raise_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nothing_here.safetensors"
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        load_model_file(missing)
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        read_model_header(missing)
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        load_checkpoint(tmp_path / "nothing_here.pt")


def test_a_bare_fbanet_header_gets_a_sentence_not_a_key_error(tmp_path: Path) -> None:
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(1)}, str(bare), metadata={"format": "fbanet-model"})
    with pytest.raises(ValueError, match=r"lacks the 'fbanet' entry.*write it again") as info:
        read_model_header(bare)
    assert not str(info.value).endswith("'fbanet'")
    partial = tmp_path / "partial.safetensors"
    header = {"format": "fbanet-model", "fbanet": json.dumps({"spacing": None})}
    save_file({"w": torch.zeros(1)}, str(partial), metadata=header)
    with pytest.raises(ValueError, match=r"incomplete fbanet metadata \(no 'model' setting\)"):
        read_model_header(partial)


def test_fine_tuning_from_a_file_without_decoder_3_copies_decoder_2_into_it(
    saved: tuple[FBANet, Path], tmp_path: Path
) -> None:
    model, path = saved
    two = export_model_file(path, tmp_path / "two.safetensors", half=False, decoders=(0, 1))
    fresh = FBANet(TINY)
    initialize_from_model_file(fresh, two)
    source = model.state_dict()
    for name, value in fresh.state_dict().items():
        if name.startswith("contrast."):
            continue  # the heads are never in a model file
        if name.startswith("decoders.2."):
            # Decoder 3 (nearest) has decoder 2's (trilinear) layers: a trained start.
            torch.testing.assert_close(value, source[name.replace("decoders.2.", "decoders.1.")])
        else:
            torch.testing.assert_close(value, source[name], msg=name)


def test_fill_absent_decoders_copies_only_from_a_decoder_of_the_same_layers() -> None:
    state = FBANet(TINY, with_contrast=False).state_dict()
    before = {k: v.clone() for k, v in state.items()}
    # Only decoder 1 (transposed convolutions) present: nothing has the others' layers.
    assert fill_absent_decoders(state, (0,)) == {}
    assert all(torch.equal(state[k], before[k]) for k in state)
    assert fill_absent_decoders(state, (0, 2)) == {1: 2}
    assert torch.equal(state["decoders.1.out_conv.weight"], before["decoders.2.out_conv.weight"])
