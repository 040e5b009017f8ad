"""Where the tests find the repository, the reference facts and the shared LA data."""

from __future__ import annotations

from pathlib import Path

TESTING = Path(__file__).resolve().parent
ROOT = TESTING.parent
# The authors' loss values and checkpoint layout, copied from ../shared/reference so that the
# fidelity tests never depend on a folder outside the repository.
REFERENCE = TESTING / "Data" / "reference"
# The real LA volumes are never committed; tests that need them skip, saying so, without them.
SHARED_LA = ROOT.parent / "shared" / "la"
