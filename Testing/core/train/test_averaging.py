"""The weight average (fbanet.train.averaging) and a run that validates and exports it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from builders import StopAt, blob_case

from fbanet.config import ModelConfig, TrainConfig
from fbanet.model.files import load_model_file
from fbanet.train.averaging import WeightAverage
from fbanet.train.checkpoints import load_checkpoint
from fbanet.train.progress import StopRequest
from fbanet.train.trainer import Trainer, TrainingData

TINY = ModelConfig(base_filters=4, patch_size=(16, 16, 16), projection_dim=8)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _net() -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    return net


def test_the_average_follows_the_weights_and_the_batch_norm_statistics() -> None:
    net = _net()
    average = WeightAverage(net, 0.9)
    net[1].running_mean.fill_(2.0)
    average.update(net)  # the first update copies
    assert average.module[0].weight.item() == 1.0
    assert average.module[1].running_mean.item() == 2.0
    with torch.no_grad():
        net[0].weight.fill_(3.0)
    net[1].running_mean.fill_(4.0)
    average.update(net)
    # 0.9 * old + 0.1 * new
    assert average.module[0].weight.item() == pytest.approx(1.2)
    assert average.module[1].running_mean.item() == pytest.approx(2.2)
    assert average.updates == 2
    assert net[0].weight.item() == 3.0  # the model itself is left alone

    again = WeightAverage(_net(), 0.9)
    again.load_state_dict(average.state_dict())
    assert again.module[0].weight.item() == pytest.approx(1.2) and again.updates == 2


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1, True, "0.9"])
def test_a_decay_outside_0_1_is_refused(decay: object) -> None:
    with pytest.raises(ValueError, match=f"decay must lie in \\(0, 1\\), got {decay!r}"):
        WeightAverage(_net(), decay)  # type: ignore[arg-type]


@pytest.mark.parametrize("decay", [1.0, -0.5])
def test_the_config_refuses_a_decay_of_1_or_below_0(decay: float) -> None:
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=decay)


def _data() -> TrainingData:
    return TrainingData(
        labeled=[blob_case(f"lab{i}", i, True) for i in range(2)],
        unlabeled=[],
        validation=[blob_case("val0", 200, True)],
        spacing=(1.0, 1.0, 1.0),
    )


def _config(**changes: object) -> TrainConfig:
    base: dict[str, object] = {
        "iterations": 4, "batch_size": 2, "labeled_batch_size": 2, "learning_rate": 0.05,
        "mode": "supervised", "device": "cpu", "precision": "fp32", "seed": 5,
        "checkpoint_every": 100, "validate_every": 2, "ema_decay": 0.5,
    }  # fmt: skip
    return TrainConfig(**{**base, **changes})  # type: ignore[arg-type]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_model_file(path)[0].state_dict()


def test_a_run_exports_the_average_and_resumes_it_exactly(tmp_path: Path) -> None:
    trainer = Trainer(TINY, _config(), _data(), tmp_path / "whole", show_progress=False)
    whole = trainer.run()
    exported = _weights(whole.model_path)
    trained = trainer.model.state_dict()
    averaged = trainer.average.module.state_dict()  # type: ignore[union-attr]
    key = next(k for k in exported if k.startswith("encoder.") and k.endswith("weight"))
    torch.testing.assert_close(exported[key], averaged[key], rtol=0, atol=0)
    assert not torch.equal(exported[key], trained[key])  # the average, not the last step
    assert load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")["average"]

    stop = StopRequest()
    split = tmp_path / "split"
    first = Trainer(TINY, _config(), _data(), split, stop=stop, json_stream=StopAt(stop, 2),
                    show_progress=False).run()  # fmt: skip
    assert first.iterations == 2
    second = Trainer(TINY, _config(), _data(), split, resume=True, show_progress=False).run()
    assert second.iterations == 4
    resumed = _weights(second.model_path)
    for name, value in exported.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)


def test_without_a_decay_the_run_exports_its_last_step(tmp_path: Path) -> None:
    trainer = Trainer(TINY, _config(ema_decay=0.0), _data(), tmp_path, show_progress=False)
    result = trainer.run()
    assert trainer.average is None
    exported = _weights(result.model_path)
    for name, value in trainer.model.state_dict().items():
        if name in exported:
            torch.testing.assert_close(exported[name], value, rtol=0, atol=0, msg=name)
