"""Ranking scans by the disagreement of the decoders: scores, order, margin, CLI."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from fbanet.cli.main import main
from fbanet.config import ModelConfig
from fbanet.infer.config import InferenceConfig
from fbanet.infer.ranking import (
    Disagreement,
    disagreement,
    rank_files,
    score_probabilities,
    sort_by_disagreement,
)
from fbanet.io.volumes import Geometry, Volume, write_volume
from fbanet.model.files import ModelMetadata, save_model_file
from fbanet.model.network import FBANet

TINY = ModelConfig(base_filters=4, patch_size=(16, 16, 16), projection_dim=8)
OFFSETS = np.array([-1.0, 0.0, 1.0])  # decoder k predicts base + OFFSETS[k] * spread


class HandMadePredictor:
    """Decoders that agree outside a cube and disagree by a known spread inside it.

    The spread of each scan is looked up by its shape, so each test scan has its own.
    """

    def __init__(self, spreads: dict[tuple[int, ...], float], decoders=(0, 1, 2)) -> None:
        self.spreads = spreads
        self.metadata = ModelMetadata(model=TINY, decoders=tuple(decoders))
        self.calls: list[tuple[int, ...]] = []

    def predict(self, image: np.ndarray, decoders: Sequence[int]) -> np.ndarray:
        self.calls.append(tuple(decoders))
        spread = self.spreads[image.shape]
        foreground = np.full((len(decoders), *image.shape), 0.02, dtype=np.float32)
        if not math.isnan(spread):  # NaN: no decoder finds anything
            cube = (slice(4, 10),) * 3
            for k in range(len(decoders)):
                foreground[k][cube] = 0.7 + OFFSETS[k] * spread
        return np.stack([1.0 - foreground, foreground], axis=1)


def _volume(shape: tuple[int, int, int], seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(rng.normal(size=shape).astype(np.float32), Geometry((1.0, 1.0, 1.0)))


def test_score_is_the_mean_spread_over_the_predicted_region() -> None:
    foreground = np.zeros((3, 8, 8, 8), dtype=np.float32)
    foreground[:, 2:4, 2:4, 2:4] = np.array([0.6, 0.7, 0.8])[:, None, None, None]
    score, voxels = score_probabilities(foreground, margin=0)
    assert voxels == 8
    assert score == pytest.approx(np.std([0.6, 0.7, 0.8]), rel=1e-5)
    # Foreground of a single decoder counts: the region is where ANY decoder sees it.
    one = np.zeros((3, 8, 8, 8), dtype=np.float32)
    one[0, 0, 0, 0] = 0.9
    assert score_probabilities(one, margin=0) == (pytest.approx(np.std([0.9, 0, 0])), 1)


def test_margin_widens_the_region_and_dilutes_a_disagreement_inside() -> None:
    foreground = np.zeros((3, 12, 12, 12), dtype=np.float32)
    foreground[:, 5:7, 5:7, 5:7] = np.array([0.55, 0.7, 0.95])[:, None, None, None]
    tight, tight_voxels = score_probabilities(foreground, margin=0)
    wide, wide_voxels = score_probabilities(foreground, margin=2)
    assert wide_voxels > tight_voxels == 8
    assert wide == pytest.approx(tight * tight_voxels / wide_voxels, rel=1e-5)


def test_nothing_found_scores_zero_with_an_empty_region() -> None:
    assert score_probabilities(np.full((3, 4, 4, 4), 0.1, np.float32)) == (0.0, 0)
    with pytest.raises(ValueError, match="at least 2 decoders"):
        score_probabilities(np.zeros((1, 4, 4, 4), np.float32))


def test_ranking_orders_scans_by_known_disagreement(tmp_path: Path) -> None:
    spreads = {(20, 20, 20): 0.05, (21, 20, 20): 0.25, (22, 20, 20): 0.15, (23, 20, 20): math.nan}
    predictor = HandMadePredictor(spreads)
    names = {
        (20, 20, 20): "calm",
        (21, 20, 20): "torn",
        (22, 20, 20): "unsure",
        (23, 20, 20): "lost",
    }
    paths = [
        write_volume(_volume(shape, i), tmp_path / f"{names[shape]}.nrrd")
        for i, shape in enumerate(spreads)
    ]
    seen: list[tuple[int, str]] = []
    ranking = rank_files(
        predictor, paths, margin=0, on_scored=lambda i, d: seen.append((i, d.name))
    )
    assert seen == [(1, "calm"), (2, "torn"), (3, "unsure"), (4, "lost")]
    assert ranking[1].path == tmp_path / "torn.nrrd"
    assert [d.name for d in ranking] == ["lost", "torn", "unsure", "calm"]
    assert ranking[0].missed and ranking[0].region_voxels == 0
    expected = 0.25 * np.std(OFFSETS)
    assert ranking[1].score == pytest.approx(expected, rel=1e-5)
    assert ranking[1].region_voxels == 6**3
    assert all(calls == (0, 1, 2) for calls in predictor.calls)  # every decoder ran


def test_disagreement_score_is_a_float_and_one_decoder_is_refused() -> None:
    predictor = HandMadePredictor({(20, 20, 20): 0.1})
    score = disagreement(predictor, _volume((20, 20, 20)), margin=0).score
    assert isinstance(score, float) and score == pytest.approx(0.1 * np.std(OFFSETS), rel=1e-5)
    lonely = HandMadePredictor({(20, 20, 20): 0.1}, decoders=(0,))
    with pytest.raises(ValueError, match="several decoders"):
        disagreement(lonely, _volume((20, 20, 20)))


def test_rank_files_checks_every_input_before_scoring(tmp_path: Path) -> None:
    predictor = HandMadePredictor({(20, 20, 20): 0.1})
    scan = write_volume(_volume((20, 20, 20)), tmp_path / "a.nrrd")
    with pytest.raises(FileNotFoundError, match=r"missing\.nrrd does not exist"):
        rank_files(predictor, [scan, tmp_path / "missing.nrrd"])
    with pytest.raises(ValueError, match="same name"):
        rank_files(predictor, [scan, write_volume(_volume((20, 20, 20)), tmp_path / "a.nii.gz")])
    with pytest.raises(ValueError, match="margin must be >= 0"):
        rank_files(predictor, [scan], margin=-1)
    assert predictor.calls == []  # nothing was scored


def test_sorting_puts_missed_scans_first_then_descending_scores() -> None:
    items = [Disagreement("a", 0.1, 5), Disagreement("b", 0.0, 0), Disagreement("c", 0.3, 5)]
    assert [d.name for d in sort_by_disagreement(items)] == ["b", "c", "a"]
    assert Disagreement("b", 0.0, 0).to_dict()["missed"] is True


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model_file(path, FBANet(TINY, with_contrast=False), ModelMetadata(model=TINY))
    return path


def test_real_model_gives_a_finite_score(tiny_model: Path) -> None:
    from fbanet.infer.segmenter import Segmenter

    segmenter = Segmenter.from_file(tiny_model, InferenceConfig(device="cpu", precision="fp32"))
    result = disagreement(segmenter, _volume((18, 17, 16)), name="scan")
    assert 0.0 <= result.score <= 0.5 and math.isfinite(result.score)


def test_rank_command_json_and_table(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = []
    for i, shape in enumerate([(18, 17, 16), (20, 16, 16)]):
        images.append(write_volume(_volume(shape, i), tmp_path / f"scan{i}.nrrd"))
    common = ["-m", str(tiny_model), "--device", "cpu", "--fp32"]
    assert main(["rank", *map(str, images), *common, "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in events] == ["scored", "scored", "ranked"]
    assert {e["name"] for e in events[-1]["ranking"]} == {"scan0", "scan1"}
    order = [(not e["missed"], -e["score"]) for e in events[-1]["ranking"]]
    assert order == sorted(order)  # nothing found first, then descending disagreement
    assert main(["rank", *map(str, images), *common]) == 0
    table = capsys.readouterr().out
    assert "rank" in table and "scan0" in table and "scan1" in table


def test_rank_command_reports_a_missing_scan(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["rank", str(tmp_path / "absent.nrrd"), "-m", str(tiny_model), "--device", "cpu"])
    assert code == 2
    assert "fbanet rank: error:" in capsys.readouterr().err
