"""``python -m fbanet``: the ``fbanet`` command line."""

import sys

from fbanet.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
