"""Learning-rate schedules: hand-computed values."""

from __future__ import annotations

import pytest

from fbanet.train.schedule import learning_rate_at


def test_constant_is_the_base_rate() -> None:
    assert [learning_rate_at(0.01, t, 100) for t in (0, 50, 99)] == [0.01, 0.01, 0.01]


def test_poly_decays_with_power_0_9() -> None:
    assert learning_rate_at(0.01, 0, 100, "poly") == 0.01
    assert learning_rate_at(0.01, 50, 100, "poly") == pytest.approx(0.01 * 0.5**0.9)
    assert learning_rate_at(0.01, 99, 100, "poly") == pytest.approx(0.01 * 0.01**0.9)


def test_cosine_halves_at_mid_run() -> None:
    assert learning_rate_at(0.02, 0, 10, "cosine") == pytest.approx(0.02)
    assert learning_rate_at(0.02, 5, 10, "cosine") == pytest.approx(0.01)
    assert learning_rate_at(0.02, 9, 10, "cosine") == pytest.approx(0.02 * (1 - 0.9510565163) / 2)


def test_bad_schedule_and_iteration_are_named() -> None:
    with pytest.raises(ValueError, match="step"):
        learning_rate_at(0.01, 0, 10, "step")
    with pytest.raises(ValueError, match="outside"):
        learning_rate_at(0.01, 10, 10)
