"""The worker contract (fbanet.protocol) is the one place events, states and exit codes live."""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import pytest
from paths import ROOT

from fbanet.protocol import (
    FIELDS,
    Event,
    ExitCode,
    JobState,
    error_line,
    error_message,
    event_kind,
    make_event,
    state_for_exit,
)
from fbanet.train.progress import ProgressReporter

CONTRACT_WORDS = {e.value for e in Event} | {s.value for s in JobState}
# Every Python file that emits or reads events: the core and both Slicer modules.
SOURCES = [
    p
    for folder in (ROOT / "src" / "fbanet", ROOT / "FBANetSegmentation", ROOT / "FBANetTraining")
    for p in folder.rglob("*.py")
    if p.name != "protocol.py"
]


def test_an_event_carries_every_field_of_its_kind() -> None:
    event = make_event(Event.PROGRESS, image="a.nrrd", done=1, total=4)
    assert json.loads(json.dumps(event)) == {
        "event": "progress", "image": "a.nrrd", "done": 1, "total": 4,
    }  # fmt: skip
    assert event_kind(event) is Event.PROGRESS
    with pytest.raises(ValueError, match=r"'done' event needs the fields \['seconds'"):
        make_event(Event.DONE, image="a.nrrd")
    assert event_kind({"event": "something else"}) is None and event_kind({}) is None


def test_exit_codes_and_states() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 130]
    assert state_for_exit(0) is JobState.SUCCEEDED
    assert state_for_exit(130) is JobState.STOPPED
    assert state_for_exit(2) is JobState.FAILED and state_for_exit(-9) is JobState.FAILED
    assert state_for_exit(0, cancelled=True) is JobState.CANCELLED
    assert JobState.STOPPING.active and not JobState.STOPPED.active
    line = error_line("segment", "no such file x.nrrd")
    assert line == "fbanet segment: error: no such file x.nrrd"
    assert error_message(["info", line, "exit"]) == "no such file x.nrrd"


def test_the_trainer_reports_iterations_by_the_contract() -> None:
    stream = io.StringIO()
    reporter = ProgressReporter(10, json_stream=stream, show_bar=False)
    reporter.iteration(1, {"loss": 0.5}, 0.01)
    reporter.close()
    event = json.loads(stream.getvalue())
    assert event_kind(event) is Event.ITERATION
    assert set(FIELDS[Event.ITERATION]) <= set(event) and event["loss"] == 0.5


def _contractLiterals(path: Path) -> list[str]:
    """Contract words written by hand: in comparisons, ``"event": ...`` dicts and .get()."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            if isinstance(node.ops[0], ast.In | ast.NotIn) and isinstance(node.left, ast.Constant):
                continue  # `"iteration" in event`: a field, not the event's kind
            parts = [node.left, *node.comparators]
            parts += [
                e for p in parts if isinstance(p, ast.Tuple | ast.Set | ast.List) for e in p.elts
            ]
            found += [
                p.value for p in parts if isinstance(p, ast.Constant) and p.value in CONTRACT_WORDS
            ]
        elif isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
            found += ["event"] if "event" in keys else []
    return [f"{path.relative_to(ROOT)}: {word!r}" for word in found]


def test_no_event_name_or_state_is_spelled_out_outside_the_contract() -> None:
    offenders = [line for path in SOURCES for line in _contractLiterals(path)]
    assert offenders == []
