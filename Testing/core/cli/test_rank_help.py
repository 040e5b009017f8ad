"""``fbanet rank --help`` describes the decoders the bundled model really holds."""

from __future__ import annotations

import pytest

from fbanet.cli.main import main
from fbanet.model.bundled import default_model_path
from fbanet.model.header import read_model_header

WORDS = {1: "one", 2: "two", 3: "three"}


def test_rank_help_matches_the_bundled_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["rank", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    path = default_model_path()
    assert path is not None
    decoders = read_model_header(path).decoders
    listed = " and ".join(str(d) for d in decoders)
    assert f"the bundled model {WORDS[len(decoders)]} ({listed})" in text
    assert "three decoders'" not in text
