"""Run the pytest suite with this interpreter (CTest runs it with Slicer's Python).

Exit code 77 (CTest's skip code, see Testing/CMakeLists.txt) when pytest or a dependency of
fbanet is missing from this Python: install them with ``slicer.util.pip_install`` or run
the suite from a development environment (``scripts/setup.sh``) instead.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

SKIP = 77
ROOT = Path(__file__).resolve().parent.parent
NEEDED = ("pytest", "torch", "numpy", "SimpleITK", "h5py", "safetensors", "scipy", "slicerio")


def main() -> int:
    """Run pytest on Testing/ with the repository's ``src`` first on the path."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        sys.stderr.write(f"skipped: this Python lacks {', '.join(missing)}\n")
        return SKIP
    source = str(ROOT / "src")
    sys.path.insert(0, source)
    # Background workers started by the tests must import the same fbanet.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [source, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    import pytest

    return int(pytest.main([str(ROOT / "Testing"), *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
