"""The ``fbanet`` command line end to end: train, resume, bad input, import-checkpoint."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from builders import trained_looking_model
from paths import REFERENCE

from fbanet import __version__
from fbanet.cli.main import main
from fbanet.config import IntensityNormalization, ModelConfig
from fbanet.model.authors import convert_key
from fbanet.model.files import load_model_file, read_model_header
from fbanet.model.network import FBANet
from fbanet.train.checkpoints import load_checkpoint

REFERENCE = REFERENCE
TINY_FLAGS = ["--patch-size", "16", "16", "16", "--base-filters", "4", "--fp32", "--json",
              "--device", "cpu"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _write_nrrd(array: np.ndarray, path: Path, spacing: tuple[float, ...]) -> Path:
    """Write an (X, Y, Z) or (X, Y) array; SimpleITK wants the axes reversed."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose()))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def _blob(seed: int, shape: tuple[int, int, int] = (24, 20, 18)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    centre = [rng.uniform(0.4 * s, 0.6 * s) for s in shape]
    inside = sum(((g - c) / (0.25 * s)) ** 2 for g, c, s in zip(grid, centre, shape, strict=True))
    label = (inside <= 1).astype(np.uint8)
    image = (100.0 + 50.0 * label + rng.normal(0.0, 20.0, shape)).astype(np.float32)
    return image, label


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """Two labeled and two unlabeled NRRD cases, and a manifest with relative paths."""
    folder = tmp_path / "data"
    folder.mkdir()
    entries: dict[str, list[Any]] = {"labeled": [], "unlabeled": []}
    for i in range(4):
        image, label = _blob(i)
        _write_nrrd(image, folder / f"case{i}.nrrd", (0.8, 0.8, 1.0))
        if i < 2:
            _write_nrrd(label, folder / f"case{i}_label.nrrd", (0.8, 0.8, 1.0))
            entries["labeled"].append({"image": f"case{i}.nrrd", "label": f"case{i}_label.nrrd"})
        else:
            entries["unlabeled"].append(f"case{i}.nrrd")
    path = folder / "manifest.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_train_end_to_end_and_resume(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main(["train", "--manifest", str(manifest), "-o", str(out), "--iterations", "2",
                 "--region-margin-mm", "12", "--intensity-scale", "0.2", *TINY_FLAGS])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    events = _json_lines(captured.out)  # every stdout line is JSON
    assert [e["iteration"] for e in events if e["event"] == "iteration"] == [1, 2]
    assert events[-1]["event"] == "finished" and events[-1]["iteration"] == 2
    for event in events[:-1]:
        assert np.isfinite(event["loss"]) and 0.0 <= event["dice_loss"] <= 3.0
    for name in ("config.json", "model.safetensors", "checkpoints/last.pt", "progress.jsonl"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["model"]["patch_size"] == [16, 16, 16]
    assert config["model"]["base_filters"] == 4
    assert config["train"]["precision"] == "fp32" and config["train"]["iterations"] == 2
    assert config["train"]["region_margin_mm"] == 12.0
    assert config["train"]["intensity_scale"] == 0.2
    assert config["data"]["labeled"] == ["case0", "case1"]
    assert config["data"]["normalization"] == "zscore"
    header = read_model_header(out / "model.safetensors")
    assert header.iterations == 2
    assert header.spacing == pytest.approx((0.8, 0.8, 1.0))
    assert header.model.patch_size == (16, 16, 16)

    code = main(["train", "--manifest", str(manifest), "-o", str(out), "--resume",
                 "--iterations", "3", "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    events = _json_lines(captured.out)
    assert [e["iteration"] for e in events if e["event"] == "iteration"] == [3]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["iteration"] == 3
    # The run's own configuration was reused: same tiny architecture, fp32.
    assert read_model_header(out / "model.safetensors").model.base_filters == 4
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["train"]["iterations"] == 3 and config["train"]["precision"] == "fp32"
    progress = _json_lines((out / "progress.jsonl").read_text(encoding="utf-8"))
    assert [e["iteration"] for e in progress if e["event"] == "iteration"] == [1, 2, 3]

    # Without --resume the run folder is protected.
    code = main(["train", "--manifest", str(manifest), "-o", str(out), "--iterations", "4",
                 *TINY_FLAGS])  # fmt: skip
    captured = capsys.readouterr()
    assert code != 0
    assert "already holds a run" in captured.err and "--resume" in captured.err


def _error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("fbanet train: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _bad_manifest(tmp_path: Path, manifest: Path, entries: dict[str, Any]) -> Path:
    path = manifest.parent / "bad_manifest.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("no data", r"no data: give --manifest"),
        ("contrastive", r"'bogus'.*valid values: 'ranked', 'infonce'"),
        ("patch", r"multiples of 16"),
        ("missing file", r"missing_case\.nrrd does not exist"),
        ("2d image", r"flat\.nrrd.*(3-?D|3 dimensions|2-?D|dimension)"),
        ("config type", r"iterations must be an int, got '5'"),
    ],
)
def test_bad_input_gives_exit_code_2_and_one_line(
    case: str,
    pattern: str,
    manifest: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    data = ["--manifest", str(manifest)]
    extra: list[str] = []
    if case == "no data":
        data = []
    elif case == "contrastive":
        extra = ["--contrastive", "bogus"]
    elif case == "patch":
        extra = ["--patch-size", "20", "16", "16"]
    elif case == "missing file":
        entries = json.loads(manifest.read_text(encoding="utf-8"))
        entries["unlabeled"].append("missing_case.nrrd")
        data = ["--manifest", str(_bad_manifest(tmp_path, manifest, entries))]
    elif case == "2d image":
        _write_nrrd(_blob(9)[0][:, :, 5], manifest.parent / "flat.nrrd", (1.0, 1.0))
        entries = json.loads(manifest.read_text(encoding="utf-8"))
        entries["unlabeled"].append("flat.nrrd")
        data = ["--manifest", str(_bad_manifest(tmp_path, manifest, entries))]
    elif case == "config type":  # a JSON string where a number belongs: bad input, not a bug
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"train": {"iterations": "5"}}), encoding="utf-8")
        extra = ["--config", str(config)]
    flags = ["--iterations", "1", "--base-filters", "4", "--fp32", "--json", "--device", "cpu"]
    if case == "config type":
        flags.remove("--iterations")
        flags.remove("1")
    if case != "patch":
        flags += ["--patch-size", "16", "16", "16"]
    code = main(["train", *data, "-o", str(out), *flags, *extra])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert re.search(pattern, _error_line(captured.err)), captured.err
    assert captured.out == ""  # no progress: nothing was trained
    assert not (out / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("case", ["no unlabeled", "cuda", "init model"])
def test_a_run_refused_at_start_leaves_no_folder(
    case: str, manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    flags = ["--iterations", "1", *TINY_FLAGS]
    if case == "no unlabeled":
        entries = json.loads(manifest.read_text(encoding="utf-8"))
        entries["unlabeled"] = []
        flags += ["--manifest", str(_bad_manifest(tmp_path, manifest, entries))]
    else:
        flags += ["--manifest", str(manifest)]
    if case == "cuda":
        flags += ["--device", "cuda"]  # the last --device wins; there is no GPU here
    if case == "init model":
        (tmp_path / "bad.safetensors").write_bytes(b"not a model")
        flags += ["--init-model", str(tmp_path / "bad.safetensors")]
    code = main(["train", "-o", str(out), *flags])
    assert code != 0
    _error_line(capsys.readouterr().err)
    assert not out.exists()  # no run folder with an empty train.log


def test_train_log_holds_the_run_from_its_first_line(
    manifest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # what the command sets up outside pytest
    out = tmp_path / "run"
    assert main(["train", "--manifest", str(manifest), "-o", str(out), "--iterations", "1",
                 *TINY_FLAGS]) == 0  # fmt: skip
    log = (out / "train.log").read_text(encoding="utf-8")
    assert "loaded 2 case(s)" in log and "compute: cpu, float32" in log and "finished" in log


def test_nan_loss_is_one_error_line_without_traceback(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import fbanet.train.trainer as training

    real_loss = training.fba_loss

    def nan_loss(*args: Any, **kwargs: Any) -> Any:
        terms = real_loss(*args, **kwargs)
        return dataclasses.replace(terms, total=terms.total * float("nan"))

    monkeypatch.setattr(training, "fba_loss", nan_loss)
    out = tmp_path / "run"
    code = main(["train", "--manifest", str(manifest), "-o", str(out), "--iterations", "2",
                 *TINY_FLAGS])  # fmt: skip
    assert code == 1
    line = _error_line(capsys.readouterr().err)
    assert "no checkpoint was written yet" in line and "is kept" not in line
    assert "run failed: the loss became nan" in (out / "train.log").read_text(encoding="utf-8")


def test_a_type_error_from_a_bug_is_not_reported_as_bad_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fbanet.cli.main as cli

    def buggy(args: Any) -> int:
        return len(3)  # type: ignore[arg-type]  # a programming error: TypeError

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["rank"].set_defaults(handler=buggy)  # type: ignore[union-attr]
    with pytest.raises(TypeError, match="has no len"):
        cli.main(["rank", "scan.nrrd"])


# -- import-checkpoint ------------------------------------------------------------------------

_ENCODER_NAMES = ("one", "two", "three", "four", "five")
_DECODER_NAMES = {
    "ups.0": "block_five_up", "stages.0": "block_six", "ups.1": "block_six_up",
    "stages.1": "block_seven", "ups.2": "block_seven_up", "stages.2": "block_eight",
    "ups.3": "block_eight_up", "stages.3": "block_nine",
}  # fmt: skip
_CONTRAST_NAMES = {
    "map_conv": "cm.activation_head", "map_norm": "cm.bn_head", "fg_head": "f_mlp",
    "bg_head": "b_mlp",
}  # fmt: skip


def authors_key(key: str) -> str:
    """The FBA-Net authors' name of our parameter ``key`` (the inverse of ``convert_key``)."""
    parts = key.split(".")
    if parts[0] == "encoder":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        suffix = "_dw" if kind == "downs" else ""
        return f"encoder.block_{_ENCODER_NAMES[index]}{suffix}.conv.{rest}"
    if parts[0] == "decoders":
        decoder = f"decoder{int(parts[1]) + 1}"
        if parts[2] == "out_conv":
            return f"{decoder}.out_conv.{'.'.join(parts[3:])}"
        block = _DECODER_NAMES[f"{parts[2]}.{parts[3]}"]
        return f"{decoder}.{block}.conv.{'.'.join(parts[4:])}"
    if parts[0] == "contrast":
        decoder = f"decoder{int(parts[1]) + 1}"
        return f"{decoder}.{_CONTRAST_NAMES[parts[2]]}.{'.'.join(parts[3:])}"
    raise KeyError(key)


def _authors_state(model: FBANet) -> dict[str, torch.Tensor]:
    state = {authors_key(k): v.clone() for k, v in model.state_dict().items()}
    assert len(state) == len(model.state_dict())
    # The inverse is exact: the importer's renaming takes every name back.
    assert {convert_key(k) for k in state} == set(model.state_dict())
    return state


def test_authors_key_inverts_convert_key_on_the_official_layout() -> None:
    table = REFERENCE / "official_state_dict_la.tsv"
    official = {}
    for line in table.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, shape = line.split("\t")[:2]
            official[name] = shape
    with torch.device("meta"):  # the LA network's shapes without allocating its weights
        model = FBANet(ModelConfig())
    ours = {
        authors_key(k): "x".join(str(s) for s in v.shape) or "scalar"
        for k, v in model.state_dict().items()
    }
    assert set(ours) == set(official)
    mismatched = sorted(k for k in ours if ours[k] != official[k])
    assert not mismatched, [(k, ours[k], official[k]) for k in mismatched[:5]]


@pytest.mark.parametrize("layout", ["plain", "wrapped"])
def test_import_checkpoint_gives_the_same_outputs(
    layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ModelConfig(base_filters=4, patch_size=(32, 32, 32))
    original = trained_looking_model(config)
    state: dict[str, Any] = _authors_state(original)
    if layout == "wrapped":  # saved from nn.DataParallel, inside a dict
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    checkpoint = tmp_path / "iter_15000.pth"
    torch.save(state, checkpoint)
    out = tmp_path / "imported.safetensors"
    code = main(["import-checkpoint", str(checkpoint), "-o", str(out), "--spacing",
                 "0.625", "0.625", "0.625"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    loaded, metadata = load_model_file(out)
    assert metadata.model == config  # patch size recovered from the projection heads
    assert metadata.spacing == (0.625, 0.625, 0.625)
    # The authors trained on the LA HDF5 files as stored: so must their model see them.
    assert metadata.normalization is IntensityNormalization.AS_STORED
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = original.decode(x)[0]
        actual = loaded.decode(x)[0]
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_import_refuses_foreign_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "other.pth"
    torch.save({"backbone.conv1.weight": torch.zeros(4, 1, 3, 3, 3)}, checkpoint)
    code = main(["import-checkpoint", str(checkpoint), "-o", str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err
    assert code == 2
    assert "'backbone.conv1.weight' is not a parameter" in err and "Traceback" not in err
    assert not (tmp_path / "m.safetensors").exists()


class _Payload:
    """An object a pickle may carry: loading it would run its class's code."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (print, ("this ran while loading",))


def test_a_pickled_checkpoint_is_refused_without_inviting_unsafe_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "pickled.pth"
    torch.save({"model": _Payload()}, checkpoint)
    code = main(["import-checkpoint", str(checkpoint), "-o", str(tmp_path / "m.safetensors")])
    captured = capsys.readouterr()
    assert code == 2
    assert "this ran while loading" not in captured.out  # never executed
    assert "refuses to load it" in captured.err
    assert "weights_only" not in captured.err and "False" not in captured.err


# -- the installed commands -------------------------------------------------------------------


def test_module_help_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fbanet", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "import-checkpoint" in result.stdout


def test_console_script_version() -> None:
    script = Path(sys.executable).parent / "fbanet"
    exe = str(script) if script.exists() else shutil.which("fbanet")
    assert exe is not None, "the fbanet console script is not installed: run scripts/setup.sh"
    result = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"fbanet {__version__}"


def test_top_level_help_speaks_to_users(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "calls the library" not in text and "``" not in text
    assert "'fbanet demo'" in text and "left-atrium segmentation" in text


def test_init_model_bundled_names_the_bundled_model(tmp_path: Path) -> None:
    from fbanet.cli.main import build_parser
    from fbanet.model.bundled import default_model_path

    args = build_parser().parse_args(["train", "--init-model", "bundled", "-o", str(tmp_path)])
    assert args.init_model == default_model_path() and args.init_model.is_file()
    other = build_parser().parse_args(["train", "--init-model", "m.safetensors", "-o", "x"])
    assert other.init_model == Path("m.safetensors")


def test_train_time_budget_ends_the_run_with_exit_0(
    manifest: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "run"
    with caplog.at_level("INFO"):
        code = main(["train", "--manifest", str(manifest), "-o", str(out), "--iterations",
                     "100000", "--time-budget", "1.5", *TINY_FLAGS])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    events = _json_lines(captured.out)
    assert events[-1]["event"] == "finished" and events[-1]["iteration"] < 100000
    assert "stopped on its time budget" in caplog.text
    torchrun = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29500"}  # fmt: skip
    for name, value in torchrun.items():
        monkeypatch.setenv(name, value)
    code = main(["train", "--manifest", str(manifest), "-o", str(tmp_path / "ddp"),
                 "--time-budget", "60", *TINY_FLAGS])  # fmt: skip
    assert code == 2
    assert "--time-budget works in one process" in capsys.readouterr().err
